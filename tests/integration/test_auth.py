"""`PACSFLOW_AUTH=jwt` against real processes and a real issuer (tests/support/issuer.py): every
DICOMweb route asks for a bearer token, judges it (signature, issuer, audience, lifetime, key and
algorithm), and grants what its scopes and tenants claim say; a key rotation at the issuer is picked
up without a restart; the access log names who did what, and never holds a token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests
from pydicom.uid import CTImageStorage

from pipeline import topics
from tests.support import dicomdata
from tests.support.issuer import Issuer
from tests.support.services import Broker, Service, read_topic, wait_for
from tests.support.stack import on_a_new_database

pytestmark = [pytest.mark.broker]
BOUNDARY = "auth-test-boundary"
EVERY_RIGHT = "dicomweb.read dicomweb.write dicomweb.delete"
REFRESH_S = 1.0  # PACSFLOW_OIDC_JWKS_REFRESH_S of the stack's web server


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    sop: str


@dataclass
class Stack:
    base: str
    web: Service
    issuer: Issuer
    bootstrap: str
    default: Instance
    alpha: Instance

    def call(
        self, method: str, path: str, token: str | None = None, tenant: str | None = None, **kwargs: object
    ) -> requests.Response:
        root = f"{self.base}/tenants/{tenant}/dicomweb" if tenant else f"{self.base}/dicomweb"
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, f"{root}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def found(self, path: str, token: str, tenant: str | None = None) -> bool:
        answer = self.call("GET", path, token, tenant)
        return answer.status_code == 200 and answer.json() != []


def stow_body(instance: Instance, patient: str) -> bytes:
    ds = dicomdata.image(
        CTImageStorage, instance.study, instance.series, instance.sop, 1, patient_name=patient
    )
    return (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + dicomdata.encode(ds)
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


STOW_HEADERS = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}


def routes(instance: Instance) -> dict[str, tuple[str, str, dict[str, object]]]:
    """Every kind of DICOMweb request: (method, path, request arguments)."""
    study = f"/studies/{instance.study}"
    sop = f"{study}/series/{instance.series}/instances/{instance.sop}"
    return {
        "qido": ("GET", f"/studies?StudyInstanceUID={instance.study}", {}),
        "metadata": ("GET", f"{study}/metadata", {}),
        "frames": (
            "GET",
            f"{sop}/frames/1",
            {"headers": {"Accept": "multipart/related; type=application/octet-stream"}},
        ),
        "retrieve": ("GET", sop, {"headers": {"Accept": 'multipart/related; type="application/dicom"'}}),
        "rendered": ("GET", f"{sop}/rendered", {"headers": {"Accept": "image/jpeg"}}),
        "stow": ("POST", "/studies", {"data": stow_body(instance, "Stow^Again"), "headers": STOW_HEADERS}),
        "delete": ("DELETE", sop, {}),
    }


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("auth")
    run = uuid.uuid4().int % 100_000
    default = Instance(dicomdata.uid(run, 1), dicomdata.uid(run, 1, 1), dicomdata.uid(run, 1, 1, 1))
    alpha = Instance(dicomdata.uid(run, 2), dicomdata.uid(run, 2, 1), dicomdata.uid(run, 2, 1, 1))
    with Issuer(audience="pacsflow") as issuer:
        web = {
            "PACSFLOW_VIEWER": "off",
            "PACSFLOW_AUTH": "jwt",
            "PACSFLOW_OIDC_ISSUER": issuer.url,
            "PACSFLOW_OIDC_AUDIENCE": "pacsflow",
            "PACSFLOW_OIDC_JWKS_REFRESH_S": str(REFRESH_S),
        }
        with on_a_new_database(broker.bootstrap, redis_url, tmp, scp=None, web=web) as s:
            running = Stack(s.base, s.web, issuer, broker.bootstrap, default, alpha)
            admin = issuer.token(scope="dicomweb.admin", sub="setup")
            for instance, tenant in ((default, None), (alpha, "alpha")):
                stored = running.call(
                    "POST",
                    "/studies",
                    admin,
                    tenant,
                    data=stow_body(instance, "Auth^Test"),
                    headers=STOW_HEADERS,
                )
                assert stored.status_code == 200, stored.text
                wait_for(
                    lambda i=instance, t=tenant: running.found(
                        f"/studies?StudyInstanceUID={i.study}", admin, t
                    ),
                    60,
                    "the stored study to be searchable",
                )
            yield running


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _claims(issuer: Issuer, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": issuer.url,
        "aud": "pacsflow",
        "sub": "mallory",
        "scope": EVERY_RIGHT,
        "iat": now,
        "exp": now + 300,
        **overrides,
    }


def unsigned(issuer: Issuer) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": issuer.kid}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims(issuer)).encode())}."


def hmac_with_public_key(issuer: Issuer) -> str:
    """The classic confusion: HS256 keyed with the issuer's public key, which anyone can fetch."""
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims(issuer)).encode())}"
    signature = hmac.new(issuer.public_pem, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(signature)}"


def tampered(issuer: Issuer) -> str:
    """A good read token whose payload was changed to grant every right: its signature no longer fits."""
    header, payload, signature = issuer.token(scope="dicomweb.read").split(".")
    claims = json.loads(_unb64(payload))
    claims["scope"] = f"{EVERY_RIGHT} dicomweb.admin"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


BAD_TOKENS: dict[str, Callable[[Issuer], str | None]] = {
    "no token": lambda issuer: None,
    "not a JWT": lambda issuer: "not-a-token",
    "wrong audience": lambda issuer: issuer.token(scope=EVERY_RIGHT, aud="someone-else"),
    "wrong issuer": lambda issuer: issuer.token(scope=EVERY_RIGHT, iss="https://issuer.invalid"),
    "expired": lambda issuer: issuer.token(scope=EVERY_RIGHT, expires_in=-3600),
    "not yet valid": lambda issuer: issuer.token(scope=EVERY_RIGHT, not_before=3600),
    "alg none": unsigned,
    "HS256 with the public key": hmac_with_public_key,
    "unknown key": lambda issuer: issuer.token(scope=EVERY_RIGHT, key="unknown"),
    "tampered payload": tampered,
}


@pytest.mark.parametrize("route", ["qido", "metadata", "frames", "retrieve", "rendered", "stow", "delete"])
@pytest.mark.parametrize("bad", list(BAD_TOKENS))
def test_a_bad_token_is_401_on_every_route(stack: Stack, route: str, bad: str) -> None:
    method, path, kwargs = routes(stack.default)[route]
    answer = stack.call(method, path, BAD_TOKENS[bad](stack.issuer), **kwargs)
    assert answer.status_code == 401, answer.text
    challenge = answer.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert "error_description=" in challenge
    assert answer.json()["status"] == 401 and answer.json()["error"]


@pytest.mark.parametrize("route", ["qido", "metadata", "frames", "retrieve", "rendered"])
def test_a_good_read_token_reads(stack: Stack, route: str) -> None:
    method, path, kwargs = routes(stack.default)[route]
    answer = stack.call(method, path, stack.issuer.token(scope="dicomweb.read"), **kwargs)
    assert answer.status_code == 200, answer.text
    if route == "qido":
        assert [s["0020000D"]["Value"][0] for s in answer.json()] == [stack.default.study], answer.text


@pytest.mark.parametrize("route", ["stow", "delete"])
def test_a_read_only_token_may_not_store_or_delete(stack: Stack, route: str) -> None:
    method, path, kwargs = routes(stack.default)[route]
    answer = stack.call(method, path, stack.issuer.token(scope="dicomweb.read"), **kwargs)
    assert answer.status_code == 403, answer.text
    assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]
    still = stack.call(
        "GET", f"/studies/{stack.default.study}/metadata", stack.issuer.token(scope="dicomweb.read")
    )
    assert still.status_code == 200 and len(still.json()) == 1


@pytest.mark.parametrize("route", ["qido", "metadata", "frames", "retrieve", "rendered", "stow", "delete"])
def test_a_token_for_alpha_is_403_on_beta(stack: Stack, route: str) -> None:
    method, path, kwargs = routes(stack.alpha)[route]
    token = stack.issuer.token(scope=EVERY_RIGHT, tenants=["alpha"])
    answer = stack.call(method, path, token, "beta", **kwargs)
    assert answer.status_code == 403, answer.text
    default = stack.call(
        method, path, token, None, **kwargs
    )  # nor the default tenant, which it does not name
    assert default.status_code == 403, default.text


def test_a_token_for_alpha_reads_alpha_and_nothing_else(stack: Stack) -> None:
    token = stack.issuer.token(scope="dicomweb.read", tenants="alpha")
    found = stack.call("GET", "/studies", token, "alpha")
    assert found.status_code == 200, found.text
    assert [s["0020000D"]["Value"][0] for s in found.json()] == [stack.alpha.study]
    for route in ("metadata", "frames", "retrieve"):
        method, path, kwargs = routes(stack.alpha)[route]
        assert stack.call(method, path, token, "alpha", **kwargs).status_code == 200, route


def test_a_token_naming_no_tenant_uses_the_default_tenant_only(stack: Stack) -> None:
    token = stack.issuer.token(scope="dicomweb.read")
    assert stack.call("GET", "/studies", token).status_code == 200
    assert stack.call("GET", "/studies", token, "alpha").status_code == 403


def test_alpha_stores_and_deletes_in_alpha(stack: Stack) -> None:
    token = stack.issuer.token(scope=EVERY_RIGHT, tenants=["alpha"])
    own = Instance(stack.alpha.study, stack.alpha.series, f"{stack.alpha.sop}.9")
    stored = stack.call(
        "POST", "/studies", token, "alpha", data=stow_body(own, "Auth^Test"), headers=STOW_HEADERS
    )
    assert stored.status_code == 200, stored.text
    path = f"/studies/{own.study}/series/{own.series}/instances/{own.sop}"
    wait_for(
        lambda: stack.call("GET", f"{path}/metadata", token, "alpha").status_code == 200,
        60,
        "the instance indexed",
    )
    deleted = stack.call("DELETE", path, token, "alpha")
    assert deleted.status_code in (200, 202, 204), deleted.text


def test_no_token_is_needed_for_health_and_preflights(stack: Stack) -> None:
    assert requests.get(f"{stack.base}/health", timeout=10).status_code == 200
    preflight = requests.options(
        f"{stack.base}/dicomweb/studies",
        headers={
            "Origin": "https://viewer.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_a_token_for_alpha_is_403_on_betas_reports(stack: Stack) -> None:
    token = stack.issuer.token(scope=EVERY_RIGHT, tenants=["alpha"])
    headers = {"Authorization": f"Bearer {token}"}
    beta = requests.get(f"{stack.base}/tenants/beta/analytics/reports", headers=headers, timeout=10)
    assert beta.status_code == 403, beta.text
    alpha = requests.get(f"{stack.base}/tenants/alpha/analytics/reports", headers=headers, timeout=10)
    assert alpha.status_code == 200, alpha.text


def test_stow_without_a_token_is_refused_before_its_body_is_sent(stack: Stack) -> None:
    """``Expect: 100-continue``: the client waits for the go-ahead, and gets the 401 instead."""
    connection = http.client.HTTPConnection("127.0.0.1", int(stack.base.rsplit(":", 1)[1]), timeout=10)
    try:
        connection.putrequest("POST", "/dicomweb/studies")
        connection.putheader("Content-Type", STOW_HEADERS["Content-Type"])
        connection.putheader("Content-Length", str(50 * 1024 * 1024))
        connection.putheader("Expect", "100-continue")
        connection.endheaders()  # and no body: a server that said 100 Continue would wait for it
        answer = connection.getresponse()
        assert answer.status == 401
        assert 'error="invalid_token"' in answer.getheader("WWW-Authenticate", "")
    finally:
        connection.close()


def test_every_tenants_reports_need_admin(stack: Stack) -> None:
    read = stack.issuer.token(scope="dicomweb.read")
    answer = requests.get(
        f"{stack.base}/analytics/reports", headers={"Authorization": f"Bearer {read}"}, timeout=10
    )
    assert answer.status_code == 403
    assert requests.get(f"{stack.base}/analytics/reports", timeout=10).status_code == 401
    admin = stack.issuer.token(scope="dicomweb.admin")
    answer = requests.get(
        f"{stack.base}/analytics/reports", headers={"Authorization": f"Bearer {admin}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text


def test_a_key_rotation_is_picked_up_without_a_restart(stack: Stack) -> None:
    before = stack.issuer.kid
    new = stack.issuer.rotate()
    assert new != before
    token = stack.issuer.token(scope="dicomweb.read")
    # The first request may come within REFRESH_S of the last fetch: the new key is fetched at most
    # that much later, and never more than once per REFRESH_S.
    wait_for(
        lambda: stack.call("GET", "/studies", token).status_code == 200,
        10 * REFRESH_S,
        "the new key to be used",
    )
    assert stack.call("GET", "/studies", stack.issuer.token(scope="dicomweb.read")).status_code == 200


def test_unknown_keys_do_not_hammer_the_issuer(stack: Stack) -> None:
    fetched = stack.issuer.jwks_fetches
    started = time.monotonic()
    for _ in range(40):
        token = stack.issuer.token(scope="dicomweb.read", key="unknown")
        assert stack.call("GET", "/studies", token).status_code == 401
    elapsed = time.monotonic() - started
    # At most one fetch per REFRESH_S (and one for the discovery document each time).
    assert stack.issuer.jwks_fetches - fetched <= 1 + int(elapsed / REFRESH_S)


def test_the_access_log_names_who_did_what_and_never_the_token(stack: Stack) -> None:
    subject = f"auditor-{uuid.uuid4().hex[:8]}"
    token = stack.issuer.token(scope="dicomweb.read", sub=subject, client_id="audit-client")
    assert stack.call("GET", f"/studies/{stack.default.study}/metadata", token).status_code == 200
    [record] = asyncio.run(
        read_topic(
            stack.bootstrap, topics.WADO_ACCESS_LOG, 1, 30, where=lambda r: r.get("subject") == subject
        )
    )
    logged = json.loads(record.value)
    assert logged["client_id"] == "audit-client"
    assert logged["route"] == "/dicomweb/studies/{study}/metadata" and logged["status"] == 200
    wait_for(lambda: subject in stack.web.log_path.read_text(), 10, "the request's log line")
    log = stack.web.log_path.read_text()
    signature = token.rsplit(".", 1)[1]
    assert token not in log and signature not in log


def test_an_oversized_token_is_refused_without_being_logged(stack: Stack) -> None:
    token = stack.issuer.token(scope="dicomweb.read", extra={"padding": "x" * 20_000})
    answer = stack.call("GET", "/studies", token)
    assert answer.status_code == 400
    assert stack.call("GET", "/studies", stack.issuer.token(scope="dicomweb.read")).status_code == 200
    wait_for(lambda: "http_request_refused" in stack.web.log_path.read_text(), 10, "the refusal to be logged")
    log = stack.web.log_path.read_text()
    # aiohttp's parser keeps the bytes it was reading when the limit was hit, from wherever in the
    # header that was: no piece of the token may be in the log.
    assert not any(token[i : i + 32] in log for i in range(0, len(token) - 32, 16))


def test_no_stack_trace_in_any_answer(stack: Stack) -> None:
    token = stack.issuer.token(scope="dicomweb.read")
    for path in (
        "/studies?limit=abc",
        "/studies/not-a-uid/metadata",
        "/studies/1.2/series/3/instances/4/frames/x",
    ):
        answer = stack.call("GET", path, token)
        assert 400 <= answer.status_code < 500, (path, answer.status_code)
        assert "Traceback" not in answer.text and "SELECT" not in answer.text.upper()


def test_stow_with_expect_100_continue_and_a_token_stores(stack: Stack) -> None:
    token = stack.issuer.token(scope="dicomweb.write")
    own = Instance(stack.default.study, stack.default.series, f"{stack.default.sop}.100")
    headers = {**STOW_HEADERS, "Expect": "100-continue"}
    stored = stack.call("POST", "/studies", token, data=stow_body(own, "Auth^Test"), headers=headers)
    assert stored.status_code == 200, stored.text


@pytest.mark.parametrize("alg", ["RS256", "PS256", "RS512", "ES256", "ES384", "EdDSA"])
def test_every_asymmetric_algorithm_of_the_issuers_keys_reads(stack: Stack, alg: str) -> None:
    answer = stack.call("GET", "/studies", stack.issuer.token(scope="dicomweb.read", alg=alg))
    assert answer.status_code == 200, answer.text
