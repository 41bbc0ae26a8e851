"""The issuer's keys as pacsflow takes them from a real HTTP server: a key it cannot use is skipped,
never fatal; keys of a kind it never accepts are left out; an issuer that is down is retried."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from egress.auth.keys import IssuerKeys, KeysUnavailable
from pipeline import settings


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _rsa_jwk(kid: str) -> dict[str, str]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "use": "sig", "n": _b64(numbers.n), "e": _b64(numbers.e)}


async def _keys_from(jwks: Mapping[str, object] | None) -> tuple[IssuerKeys, list[str]]:
    """Keys fetched from a server answering ``jwks`` (None: 503), and the kids it could find."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(jwks) if jwks is not None else web.Response(status=503)

    app = web.Application()
    app.router.add_get("/jwks", answer)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        loaded = settings.load(
            {
                "PACSFLOW_AUTH": "jwt",
                "PACSFLOW_OIDC_ISSUER": str(server.make_url("/")),
                "PACSFLOW_OIDC_JWKS_URL": str(server.make_url("/jwks")),
            }
        )
        keys = IssuerKeys(loaded, session)
        found = [kid for kid in ("good", "broken", "secret", "encryption") if await keys.get(kid) is not None]
        return keys, found


def test_a_broken_key_is_skipped_and_the_good_one_kept() -> None:
    jwks = {
        "keys": [
            {"kty": "RSA", "kid": "broken", "x5c": ["not a certificate"]},  # no n, e: unusable
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},  # an HMAC secret: never a verification key
            {**_rsa_jwk("encryption"), "use": "enc"},
            _rsa_jwk("good"),
        ]
    }
    keys, found = asyncio.run(_keys_from(jwks))
    assert found == ["good"]
    assert keys.fetches == 1  # the unknown kids asked for right after did not fetch again


def test_an_issuer_that_is_down_is_keys_unavailable() -> None:
    with pytest.raises(KeysUnavailable, match="PACSFLOW_OIDC_JWKS_URL"):
        asyncio.run(_keys_from(None))
