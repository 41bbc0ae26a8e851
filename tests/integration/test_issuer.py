"""The test OpenID Connect issuer over real HTTP: discovery, keys, minted tokens, rotation, and the
viewer's sign-in (authorization code with PKCE through the login form)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from authlib.oidc.discovery import OpenIDProviderMetadata

from tests.support.issuer import Issuer, User

CALLBACK = "http://127.0.0.1:9/callback"  # never fetched: the test reads the redirect's Location


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    users = {
        "alice": User("alice-password", tenants=["alpha"]),
        "reader": User("reader-password", scope="dicomweb.read"),
    }
    with Issuer(redirect_uris=[CALLBACK], users=users) as running:
        yield running


def jwks(issuer: Issuer) -> jwt.PyJWKSet:
    response = requests.get(issuer.jwks_url, timeout=5)
    response.raise_for_status()
    return jwt.PyJWKSet.from_dict(response.json())


def verify(issuer: Issuer, token: str, audience: str = "pacsflow") -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    # The raw key: a PyJWK is bound to one algorithm (RS256 for an RSA key without `alg`), and the
    # issuer's RSA key signs RS* and PS* alike.
    key = jwks(issuer)[header["kid"]].key
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=[header["alg"]], audience=audience, issuer=issuer.url
    )
    return claims


def test_discovery_names_the_endpoints_and_what_they_support(issuer: Issuer) -> None:
    response = requests.get(issuer.discovery_url, timeout=5)

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    metadata = response.json()
    OpenIDProviderMetadata(metadata).validate()
    assert metadata["issuer"] == issuer.url
    assert metadata["jwks_uri"] == issuer.jwks_url
    for endpoint, path in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("userinfo_endpoint", "/userinfo"),
        ("end_session_endpoint", "/logout"),
    ]:
        assert metadata[endpoint] == issuer.url + path
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["token_endpoint_auth_methods_supported"] == ["none"]
    assert "dicomweb.write" in metadata["scopes_supported"]


def test_jwks_lists_the_current_key_and_counts_fetches(issuer: Issuer) -> None:
    before = issuer.jwks_fetches

    response = requests.get(issuer.jwks_url, timeout=5)

    assert response.headers["Access-Control-Allow-Origin"] == "*"
    kids = [k["kid"] for k in response.json()["keys"]]
    assert issuer.kid in kids
    assert {k["kty"] for k in response.json()["keys"]} == {"RSA", "EC", "OKP"}
    assert issuer.jwks_fetches == before + 1


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "ES256", "ES384", "ES512", "EdDSA"])
def test_a_minted_token_verifies_against_the_jwks(issuer: Issuer, alg: str) -> None:
    token = issuer.token(sub="bob", scope="dicomweb.read dicomweb.write", tenants=["alpha", "beta"], alg=alg)

    claims = verify(issuer, token)

    assert claims["sub"] == "bob"
    assert claims["scope"] == "dicomweb.read dicomweb.write"
    assert claims["tenants"] == ["alpha", "beta"]
    assert claims["azp"] == claims["client_id"] == "pacsflow-test"
    assert claims["exp"] - claims["iat"] == 300
    assert "nbf" not in claims


def test_a_minted_token_carries_what_it_is_asked_for(issuer: Issuer) -> None:
    token = issuer.token(
        aud=["other", "pacsflow"],
        iss="http://elsewhere",
        expires_in=-60,
        not_before=120,
        tenants="alpha",
        extra={"scope": "dicomweb.admin", "roles": ["x"]},
    )

    claims = jwt.decode(token, options={"verify_signature": False})
    now = time.time()
    assert claims["aud"] == ["other", "pacsflow"]
    assert claims["iss"] == "http://elsewhere"
    assert claims["exp"] < now < claims["nbf"]
    assert claims["tenants"] == "alpha"
    assert claims["scope"] == "dicomweb.admin"
    assert claims["roles"] == ["x"]
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(issuer, issuer.token(expires_in=-60))
    with pytest.raises(jwt.ImmatureSignatureError):
        verify(issuer, issuer.token(not_before=120))


def test_an_unknown_key_is_not_in_the_jwks(issuer: Issuer) -> None:
    header = jwt.get_unverified_header(issuer.token(key="unknown"))

    assert header["kid"] != issuer.kid
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", header["kid"])
    assert header["kid"] not in [k.key_id for k in jwks(issuer).keys]


def test_the_algorithm_confusion_token_is_hmac_keyed_with_the_public_key(issuer: Issuer) -> None:
    token = issuer.token(alg="HS256")

    signing_input, signature = token.rsplit(".", 1)
    expected = hmac.new(issuer.public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
    assert issuer.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, jwks(issuer)[issuer.kid].key, algorithms=["RS256"], audience="pacsflow")
    assert issuer.token(alg="none").endswith(".")


def test_bad_arguments_are_refused(issuer: Issuer) -> None:
    with pytest.raises(ValueError, match="alg='RS1'"):
        issuer.token(alg="RS1")
    with pytest.raises(ValueError, match="absolute http"):
        issuer.register_redirect_uri("/callback")


def test_rotation_replaces_the_key_in_the_jwks() -> None:
    with Issuer() as issuer:
        first = issuer.kid
        old_token = issuer.token()

        second = issuer.rotate()

        kids = [k.key_id for k in jwks(issuer).keys]
        assert second == issuer.kid != first
        assert second in kids and first not in kids
        assert jwt.get_unverified_header(issuer.token())["kid"] == second
        with pytest.raises(KeyError):
            verify(issuer, old_token)

        third = issuer.rotate(keep_old=True)

        kids = [k.key_id for k in jwks(issuer).keys]
        assert third in kids and second in kids
        assert verify(issuer, issuer.token())["sub"] == "alice"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_params(challenge: str, **overrides: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "pacsflow-viewer",
        "redirect_uri": CALLBACK,
        "scope": "openid profile dicomweb.read dicomweb.write",
        "state": "state-1",
        "nonce": "nonce-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **overrides,
    }


def sign_in(issuer: Issuer, params: dict[str, str], username: str, password: str) -> requests.Response:
    """What a browser does: load the login page, fill in the form, submit it where it points."""
    page = requests.get(issuer.url + "/authorize", params=params, timeout=5, allow_redirects=False)
    assert page.status_code == 200, page.text
    assert 'name="username"' in page.text and 'name="password"' in page.text
    assert ">Sign in</button>" in page.text
    found = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert found is not None
    form = {"username": username, "password": password}
    return requests.post(issuer.url + html.unescape(found[1]), data=form, timeout=5, allow_redirects=False)


def code_from(response: requests.Response) -> str:
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    query = parse_qs(location.query)
    assert query["state"] == ["state-1"]
    return query["code"][0]


def exchange(issuer: Issuer, code: str, verifier: str | None) -> requests.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    form["client_id"] = "pacsflow-viewer"
    if verifier is not None:
        form["code_verifier"] = verifier
    return requests.post(issuer.url + "/token", data=form, timeout=5)


def test_the_code_flow_with_pkce_signs_the_user_in(issuer: Issuer) -> None:
    verifier, challenge = pkce()

    code = code_from(sign_in(issuer, authorize_params(challenge), "alice", "alice-password"))
    response = exchange(issuer, code, verifier)

    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"  # noqa: S105 (a token type, not a secret)
    access = verify(issuer, tokens["access_token"])
    assert access["iss"] == issuer.url
    assert access["sub"] == "alice"
    assert access["scope"] == "openid profile dicomweb.read dicomweb.write"
    assert access["tenants"] == ["alpha"]
    assert access["azp"] == access["client_id"] == "pacsflow-viewer"
    identity = verify(issuer, tokens["id_token"], audience="pacsflow-viewer")
    assert identity["nonce"] == "nonce-1"
    assert identity["sub"] == "alice"
    assert jwt.get_unverified_header(tokens["id_token"])["kid"] == issuer.kid
    # A code is good once.
    assert exchange(issuer, code, verifier).json()["error"] == "invalid_grant"

    userinfo = requests.get(
        issuer.url + "/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=5
    )
    assert userinfo.status_code == 200, userinfo.text
    assert userinfo.json() == {
        "sub": "alice",
        "name": "alice",
        "preferred_username": "alice",
        "tenants": ["alpha"],
    }
    assert requests.get(issuer.url + "/userinfo", timeout=5).status_code == 401

    refreshed = requests.post(
        issuer.url + "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "pacsflow-viewer",
        },
        timeout=5,
    )
    assert refreshed.status_code == 200, refreshed.text
    assert verify(issuer, refreshed.json()["access_token"])["sub"] == "alice"


def test_a_wrong_password_shows_the_form_again(issuer: Issuer) -> None:
    _, challenge = pkce()

    response = sign_in(issuer, authorize_params(challenge), "alice", "not-her-password")

    assert response.status_code == 200
    assert "Wrong username or password." in response.text
    assert ">Sign in</button>" in response.text


def test_a_user_scope_limits_what_the_login_grants(issuer: Issuer) -> None:
    verifier, challenge = pkce()

    code = code_from(sign_in(issuer, authorize_params(challenge), "reader", "reader-password"))
    access = verify(issuer, exchange(issuer, code, verifier).json()["access_token"])

    assert access["scope"] == "openid profile dicomweb.read"
    assert "tenants" not in access


def test_a_token_request_without_the_code_verifier_fails(issuer: Issuer) -> None:
    _, challenge = pkce()
    code = code_from(sign_in(issuer, authorize_params(challenge), "alice", "alice-password"))

    response = exchange(issuer, code, None)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    wrong = exchange(issuer, code, pkce()[0])
    assert wrong.json() == {"error": "invalid_grant", "error_description": "Code challenge failed."}


@pytest.mark.parametrize(
    "overrides", [{"code_challenge": "", "code_challenge_method": ""}, {"code_challenge_method": "plain"}]
)
def test_an_authorization_request_without_s256_pkce_is_refused(
    issuer: Issuer, overrides: dict[str, str]
) -> None:
    _, challenge = pkce()
    params = {k: v for k, v in authorize_params(challenge, **overrides).items() if v}

    response = requests.get(issuer.url + "/authorize", params=params, timeout=5, allow_redirects=False)

    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["error"] == ["invalid_request"]


def test_an_unregistered_redirect_uri_is_refused_without_redirecting(issuer: Issuer) -> None:
    _, challenge = pkce()
    params = authorize_params(challenge, redirect_uri="http://127.0.0.1:9/elsewhere")

    response = requests.get(issuer.url + "/authorize", params=params, timeout=5, allow_redirects=False)

    assert response.status_code == 400
    assert "Location" not in response.headers


def test_the_token_endpoint_answers_the_browsers_preflight(issuer: Issuer) -> None:
    for path in ("/token", "/userinfo"):
        response = requests.options(
            issuer.url + path,
            headers={
                "Origin": "http://127.0.0.1:9",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
            timeout=5,
        )
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"


def test_logout_returns_to_the_viewer(issuer: Issuer) -> None:
    params = {
        "client_id": "pacsflow-viewer",
        "post_logout_redirect_uri": "http://127.0.0.1:9/",
        "state": "bye",
    }

    response = requests.get(issuer.url + "/logout", params=params, timeout=5, allow_redirects=False)

    assert response.status_code == 302
    assert response.headers["Location"] == "http://127.0.0.1:9/?state=bye"
    elsewhere = {**params, "post_logout_redirect_uri": "http://evil.example/"}
    page = requests.get(issuer.url + "/logout", params=elsewhere, timeout=5, allow_redirects=False)
    assert page.status_code == 200
    assert "signed out" in page.text
