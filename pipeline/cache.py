"""Redis, as a cache only: every read has an answer without it, so losing Redis costs speed.

The worker deletes what a regeneration makes stale; the web server (its reader) keeps copies
under the same keys. Keys start with ``PACSFLOW_REDIS_PREFIX`` and the tenant:

- ``<prefix><tenant>:metadata:<study>:<series>``: a series' metadata
- ``<prefix><tenant>:metadata:<study>``: a study's metadata
- ``<prefix><tenant>:generation``: a counter bumped at each change of the tenant's index (every
  indexed batch) and metadata (every regeneration); cached QIDO-RS answers carry it in their keys
  (``<prefix><tenant>:qido:<generation>:<digest>``), so a bump retires them all at once

Each call waits at most ``TIMEOUT_S`` and never raises: a failure is logged (at most every
``_WARN_EVERY_S``) and the caller goes on as if there were no cache. After a failure the cache is
skipped for ``_PAUSE_S``, so that a Redis that is away costs no request its timeout. Cached answers
expire after ``PACSFLOW_CACHE_TTL_S``: that bounds how stale one can be if a bump was lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis.asyncio as redis
from redis.exceptions import RedisError

from pipeline import log

_log = log.get(__name__)
TIMEOUT_S = 0.5
_WARN_EVERY_S = 30.0
_PAUSE_S = 5.0


class Cache:
    """A Redis client, opened by ``start`` and closed by ``stop``; a no-op without a URL.

    A plain class, not a Faust service: the web server uses it too and must not import Faust. The
    worker's app opens and closes it with its other services (``pipeline.app``).
    """

    def __init__(self, url: str, prefix: str) -> None:
        self._url = url
        self.prefix = prefix
        self._client: redis.Redis | None = None
        self._warned_at = -_WARN_EVERY_S
        self._paused_until = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._url)

    async def start(self) -> None:
        if self._url and self._client is None:
            self._client = redis.from_url(
                self._url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, retry_on_timeout=False
            )

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def series_key(self, tenant: str, study: str, series: str) -> str:
        return f"{self.prefix}{tenant}:metadata:{study}:{series}"

    def study_key(self, tenant: str, study: str) -> str:
        return f"{self.prefix}{tenant}:metadata:{study}"

    def generation_key(self, tenant: str) -> str:
        return f"{self.prefix}{tenant}:generation"

    def _usable(self) -> redis.Redis | None:
        if self._client is None or time.monotonic() < self._paused_until:
            return None
        return self._client

    def _failed(self, event: str, exc: BaseException, **context: str) -> None:
        self._paused_until = time.monotonic() + _PAUSE_S
        self._warn(event, exc, **context)

    async def bump(self, tenants: Iterable[str]) -> None:
        """Retire the cached query answers of ``tenants`` (their index changed)."""
        client = self._usable()
        if client is None:
            return
        try:
            async with client.pipeline(transaction=False) as pipe:
                for tenant in set(tenants):
                    pipe.incr(self.generation_key(tenant))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("cache_invalidation_failed", exc)

    async def query_key(self, tenant: str, digest: str) -> str | None:
        """The key of a cached query answer at the tenant's current generation; None: no cache."""
        client = self._usable()
        if client is None:
            return None
        try:
            generation = await client.get(self.generation_key(tenant))
        except (RedisError, OSError) as exc:
            self._failed("cache_read_failed", exc)
            return None
        return f"{self.prefix}{tenant}:qido:{int(generation or 0)}:{digest}"

    async def get(self, key: str, field: str | None = None) -> bytes | None:
        client = self._usable()
        if client is None:
            return None
        try:
            value = await client.get(key) if field is None else await client.hget(key, field)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            self._failed("cache_read_failed", exc)
            return None
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes, ttl_s: float, field: str | None = None) -> None:
        """Keep ``value`` under ``key`` (or its hash ``field``: one key per series, many versions)."""
        client = self._usable()
        if client is None:
            return
        try:
            if field is None:
                await client.set(key, value, ex=int(ttl_s))
            else:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.hset(key, field, value)  # type: ignore[arg-type]  # bytes are stored as they are
                    pipe.expire(key, int(ttl_s))
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("cache_write_failed", exc)

    async def invalidate_metadata(self, tenant: str, study: str, series: Iterable[str]) -> bool:
        """Delete the cached copies of a study's and its ``series``' metadata; bump the tenant's
        generation. False when Redis did not answer (nothing cached can be trusted to be gone)."""
        client = self._usable()
        if client is None:
            return False
        keys = [self.study_key(tenant, study), *(self.series_key(tenant, study, s) for s in series)]
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.unlink(*keys)
                pipe.incr(self.generation_key(tenant))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("cache_invalidation_failed", exc, tenant=tenant, study_uid=study)
            return False
        return True

    def _warn(self, event: str, exc: BaseException, **context: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            _log.warning(event, error=f"{type(exc).__name__}: {exc}", **context)
