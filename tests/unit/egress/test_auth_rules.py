"""Which right and tenant a request needs, what a token grants, and which algorithms a key verifies."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from egress.auth.guard import needs
from egress.auth.keys import algorithms_for
from egress.auth.tokens import Identity
from pipeline import settings
from pipeline.errors import SettingsError


@pytest.mark.parametrize(
    ("method", "path", "need"),
    [
        ("GET", "/dicomweb/studies", ("read", "default")),
        ("HEAD", "/dicomweb/studies/1.2/metadata", ("read", "default")),
        ("POST", "/dicomweb/studies", ("write", "default")),
        ("POST", "/tenants/alpha/dicomweb/studies/1.2", ("write", "alpha")),
        ("DELETE", "/tenants/beta/dicomweb/studies/1.2", ("delete", "beta")),
        ("GET", "/dicomweb/no-such-route", ("read", "default")),
        ("GET", "/analytics/reports/ingest_volume", ("admin", None)),
        ("GET", "/tenants/alpha/analytics/reports", ("read", "alpha")),
        ("OPTIONS", "/dicomweb/studies", None),
        ("GET", "/health", None),
        ("GET", "/analytics", None),
        ("GET", "/analytics/assets/page.js", None),
        ("GET", "/tenants/alpha/viewer", None),
        ("GET", "/dicomwebfake", None),
        # As routed: %2F stays in the tenant's segment (the router then gives the handler "a/b").
        ("GET", "/tenants/a%2Fb/dicomweb/studies", ("read", "a%2Fb")),
        ("GET", "/tenants/x%2F..%2Fbeta/analytics/reports", ("read", "x%2F..%2Fbeta")),
    ],
)
def test_the_right_a_request_needs(method: str, path: str, need: tuple[str, str | None] | None) -> None:
    assert needs(make_mocked_request(method, path), "default") == need


def identity(rights: set[str], tenants: set[str] | None) -> Identity:
    return Identity("sub", None, frozenset(rights), None if tenants is None else frozenset(tenants))


def test_admin_may_do_anything_anywhere() -> None:
    admin = identity({"admin"}, None)
    assert admin.may("delete") and admin.may_use("beta", "default")


def test_rights_and_tenants_are_what_the_token_names() -> None:
    reader = identity({"read"}, {"alpha"})
    assert reader.may("read") and not reader.may("write") and not reader.may("delete")
    assert reader.may_use("alpha", "default") and not reader.may_use("default", "default")
    assert identity({"read"}, None).may_use("default", "default")
    assert not identity({"read"}, None).may_use("alpha", "default")


@pytest.mark.parametrize(
    ("jwk", "allowed"),
    [
        ({"kty": "RSA"}, {"RS256", "PS256"}),
        ({"kty": "RSA", "alg": "PS256"}, {"PS256"}),
        ({"kty": "EC", "crv": "P-256"}, {"ES256"}),
        ({"kty": "EC", "crv": "P-384"}, set()),  # not in the allow-list below
        ({"kty": "OKP", "crv": "Ed25519"}, {"EdDSA"}),
        ({"kty": "oct"}, set()),  # an HMAC secret is never a verification key
        ({"kty": "RSA", "alg": "HS256"}, set()),
    ],
)
def test_a_key_verifies_only_algorithms_of_its_kind(jwk: dict[str, object], allowed: set[str]) -> None:
    assert algorithms_for(jwk, ("RS256", "PS256", "ES256", "EdDSA")) == allowed


def test_auth_settings_refuse_symmetric_algorithms_and_incomplete_scopes() -> None:
    with pytest.raises(SettingsError) as refused:
        settings.load(
            {
                "PACSFLOW_AUTH": "jwt",
                "PACSFLOW_OIDC_ISSUER": "https://login.example.org",
                "PACSFLOW_OIDC_ALGORITHMS": "RS256,HS256,none",
                "PACSFLOW_AUTH_SCOPES": "read=r,write=w",
            }
        )
    message = str(refused.value)
    assert "HS256, none: only asymmetric" in message and "no scope given for delete, admin" in message


def test_jwt_needs_an_issuer() -> None:
    with pytest.raises(SettingsError, match="PACSFLOW_AUTH=jwt needs PACSFLOW_OIDC_ISSUER"):
        settings.load({"PACSFLOW_AUTH": "jwt"})


def test_the_issuer_is_kept_as_its_tokens_write_it() -> None:
    loaded = settings.load({"PACSFLOW_AUTH": "jwt", "PACSFLOW_OIDC_ISSUER": "https://tenant.auth0.com/"})
    assert loaded.oidc_issuer == "https://tenant.auth0.com/"


def test_a_known_peer_must_reach_its_tenant() -> None:
    with pytest.raises(SettingsError, match="which no called AE title reaches"):
        settings.load({"PACSFLOW_SCP_PEERS": "CT1=alpha"})
    loaded = settings.load({"PACSFLOW_SCP_PEERS": "CT1=alpha", "PACSFLOW_SCP_TENANTS": "ALPHA=alpha"})
    assert [p.tenant for p in loaded.scp_peers] == ["alpha"]
