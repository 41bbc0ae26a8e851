"""A bearer token, judged: signature, issuer, audience, lifetime; then what it may do.

Signatures are checked on a worker thread, so that a burst of new tokens does not stall the event
loop for the requests already judged (PyJWT's check is about 0.1 ms, mostly Python); a token once
judged is remembered until it expires, so a viewer's hundreds of requests with one token cost one
verification, and the remembered path costs about 12 us a request (`make bench`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidTokenError,
    MissingRequiredClaimError,
)

from egress.auth.keys import IssuerKeys
from pipeline.settings import Settings

_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750's b64token
_REMEMBERED = 10_000
_REMEMBER_AT_MOST_S = 300.0
"""A remembered token is judged again after this long, so a withdrawn key stops working soon."""


class Unauthenticated(Exception):
    """No token, or one that proves nothing (401); the message says why, never the token."""


@dataclass(frozen=True)
class Identity:
    """Who a token speaks for, and what it grants."""

    subject: str
    client_id: str | None
    rights: frozenset[str]
    """Among read, write, delete, admin (admin: every right on every tenant)."""
    tenants: frozenset[str] | None
    """The tenants it names; None: the claim is absent (the default tenant only)."""

    def may(self, right: str) -> bool:
        return "admin" in self.rights or right in self.rights

    def may_use(self, tenant: str, default_tenant: str) -> bool:
        if "admin" in self.rights:
            return True
        return tenant == default_tenant if self.tenants is None else tenant in self.tenants


class TokenJudge:
    def __init__(self, settings: Settings, keys: IssuerKeys) -> None:
        self._settings = settings
        self._keys = keys
        self._scopes = {scope: right for right, scope in settings.auth_scopes.items()}
        self._remembered: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    async def identity(self, token: str) -> Identity:
        now = time.time()
        known = self._remembered.get(token)
        if known is not None and known[1] > now:
            self._remembered.move_to_end(token)
            return known[0]
        if not _TOKEN.fullmatch(token):
            raise Unauthenticated("the Authorization header is not 'Bearer <token>'")
        claims = await self._verified(token)
        identity = self._identity(claims)
        until = min(float(claims["exp"]) + self._settings.oidc_leeway_s, now + _REMEMBER_AT_MOST_S)
        self._remembered[token] = (identity, until)
        if len(self._remembered) > _REMEMBERED:
            self._remembered.popitem(last=False)
        return identity

    async def _verified(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            raise Unauthenticated("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._settings.oidc_algorithms:
            raise Unauthenticated(f"the token's algorithm {algorithm!r} is not accepted") from None
        kid = header.get("kid")
        key = await self._keys.get(kid if isinstance(kid, str) else None)
        if key is None:
            raise Unauthenticated("the token is signed by a key the issuer does not list")
        if algorithm not in key.algorithms:
            raise Unauthenticated(f"the issuer's key {kid!r} does not sign with {algorithm}")
        settings = self._settings
        try:
            return await asyncio.to_thread(
                jwt.decode,
                token,
                key.jwk.key,
                algorithms=[algorithm],
                audience=settings.oidc_audience,
                issuer=settings.oidc_issuer,
                leeway=settings.oidc_leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet (nbf)") from None
        except InvalidAudienceError:
            raise Unauthenticated(f"the token is not meant for {settings.oidc_audience!r} (aud)") from None
        except InvalidIssuerError:
            raise Unauthenticated("the token is from another issuer (iss)") from None
        except MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no {exc.claim!r} claim") from None
        except InvalidTokenError as exc:
            raise Unauthenticated(f"the token is not valid ({type(exc).__name__})") from None

    def _identity(self, claims: Mapping[str, object]) -> Identity:
        granted = _words(claims.get("scope")) | _words(claims.get("scp"))
        tenants = claims.get(self._settings.auth_tenants_claim)
        client = claims.get("azp") or claims.get("client_id")
        return Identity(
            subject=str(claims["sub"])[:256],
            client_id=str(client)[:128] if client else None,
            rights=frozenset(self._scopes[s] for s in granted if s in self._scopes),
            tenants=None if tenants is None else _words(tenants),
        )


def _words(value: object) -> frozenset[str]:
    """A claim as a set: a space-separated string (OAuth's ``scope``) or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(str(v) for v in value)
    return frozenset()
