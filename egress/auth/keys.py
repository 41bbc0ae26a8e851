"""The issuer's signing keys: fetched from its JWKS, kept, and fetched again when a token names a key
we do not hold (a rotation), at most once every ``PACSFLOW_OIDC_JWKS_REFRESH_S``.

The rate limit is what keeps a stream of tokens with made-up ``kid`` values from turning pacsflow into
a client hammering the issuer. Fetches go through aiohttp: a key fetch never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from pipeline import log
from pipeline.settings import Settings

_log = log.get(__name__)
MAX_AGE_S = 3600.0
"""Keys are fetched again at least this often, so a key the issuer withdrew stops being accepted."""
_TIMEOUT = aiohttp.ClientTimeout(total=10)
_RETRY_EMPTY_S = 5.0

# Which algorithms a key of each kind may verify: an RSA key never verifies an HMAC or EC signature,
# whatever the token's header claims.
_FAMILIES = {
    "RSA": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
    "OKP": {"EdDSA"},
}
_EC_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


class KeysUnavailable(Exception):
    """The issuer's keys could not be fetched (and none are held): the request cannot be judged."""


@dataclass(frozen=True)
class Key:
    jwk: PyJWK
    algorithms: frozenset[str]
    """The algorithms this key may verify: its kind's, narrowed by its ``alg`` and the allow-list."""


def algorithms_for(data: dict[str, object], allowed: tuple[str, ...]) -> frozenset[str]:
    kind = data.get("kty")
    family = {_EC_CURVES[str(data.get("crv"))]} if kind == "EC" and data.get("crv") in _EC_CURVES else None
    family = family or _FAMILIES.get(str(kind), set())
    if data.get("alg"):
        family = family & {str(data["alg"])}
    return frozenset(family & set(allowed))


class IssuerKeys:
    """The keys of ``PACSFLOW_OIDC_ISSUER`` (or ``PACSFLOW_OIDC_JWKS_URL``), by ``kid``."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self._issuer = settings.oidc_issuer
        self._jwks_url = settings.oidc_jwks_url
        self._allowed = settings.oidc_algorithms
        self._refresh_s = settings.oidc_jwks_refresh_s
        self._session = session
        self._keys: dict[str, Key] = {}
        self._fetched_at: float | None = None
        self._tried_at = -float("inf")
        self._lock = asyncio.Lock()
        self.fetches = 0
        self._refreshing: set[asyncio.Task[None]] = set()

    async def get(self, kid: str | None) -> Key | None:
        """The key named ``kid`` (the only key, when the token names none and the set holds one);
        None when the issuer does not list it. Raises KeysUnavailable when none can be had."""
        stale = self._fetched_at is None or time.monotonic() - self._fetched_at > MAX_AGE_S
        key = self._find(kid)
        if key is None:
            await self._refresh()
            return self._find(kid)
        if stale and not self._lock.locked():
            # Held keys stay good while they are fetched again: no request waits on an issuer
            # that is slow or down.
            task = asyncio.create_task(self._refresh())
            self._refreshing.add(task)
            task.add_done_callback(self._refreshing.discard)
        return key

    def _find(self, kid: str | None) -> Key | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        async with self._lock:
            now = time.monotonic()
            # Holding no key at all, try again soon: an issuer that was down at start comes back.
            interval = self._refresh_s if self._keys else min(self._refresh_s, _RETRY_EMPTY_S)
            if now - self._tried_at < interval:
                if not self._keys:
                    raise KeysUnavailable(f"the issuer's keys could not be fetched from {self._where()}")
                return  # fetched (or tried) a moment ago: an unknown kid stays unknown until later
            self._tried_at = now
            try:
                self._keys = await self._fetch()
                self._fetched_at = time.monotonic()
                self.fetches += 1
                _log.info("issuer_keys_fetched", url=self._where(), kids=sorted(self._keys))
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                _log.warning(
                    "issuer_keys_unavailable", url=self._where(), error=f"{type(exc).__name__}: {exc}"
                )
                if not self._keys:
                    raise KeysUnavailable(
                        f"the issuer's keys could not be fetched from {self._where()}: check "
                        "PACSFLOW_OIDC_ISSUER / PACSFLOW_OIDC_JWKS_URL"
                    ) from exc

    def _where(self) -> str:
        return self._jwks_url or self._discovery()

    def _discovery(self) -> str:
        # The issuer is kept as its tokens write it (Auth0's and Entra ID v1's end in "/").
        return f"{self._issuer.rstrip('/')}/.well-known/openid-configuration"

    async def _fetch(self) -> dict[str, Key]:
        url = self._jwks_url
        if not url:
            discovery = await self._json(self._discovery())
            url = str(discovery.get("jwks_uri") or "")
            if not url.startswith(("https://", "http://")):
                raise ValueError("the discovery document names no jwks_uri")
        listed = (await self._json(url)).get("keys")
        if not isinstance(listed, list):
            raise ValueError(f"{url} is not a JWKS (no keys list)")
        keys = {}
        for data in listed:
            if not isinstance(data, dict) or data.get("use") not in (None, "sig"):
                continue
            allowed = algorithms_for(data, self._allowed)
            if not allowed:
                continue  # a kind we never accept (oct: HMAC) or outside the allow-list
            try:
                jwk = PyJWK(data, algorithm=min(allowed))
            except PyJWTError as exc:  # one unusable key (bad material, a kind PyJWT lacks) spoils no other
                _log.warning("issuer_key_skipped", kid=data.get("kid"), error=str(exc))
                continue
            keys[str(data.get("kid") or "")] = Key(jwk, allowed)
        return keys

    async def _json(self, url: str) -> dict[str, object]:
        async with self._session.get(url, timeout=_TIMEOUT, allow_redirects=False) as response:
            response.raise_for_status()
            data = await response.json(content_type=None)
        if not isinstance(data, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return data
