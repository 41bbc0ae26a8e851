"""WADO-RS metadata (PS3.18 10.4.1.1.2): series and study, from the regenerated files when they are
current and reached by the same root; else built now from the index, the same way. An instance's
is its fragment.

Whether a file is current is one primary-key lookup (``json_meta.series_version``); a current file
goes out as it is (its pre-compressed ``.json.gz`` when the client accepts gzip, ETag and 304);
behind nginx (``PACSFLOW_HTTP_ACCEL_REDIRECT``, and the request carrying nginx's handshake header),
nginx sends it, told which by ``X-Accel-Redirect``.
An answer built on demand carries an ETag of the versions it was built from.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from urllib.parse import quote

from aiohttp import hdrs, web

from egress.proxy import ACCEL_HANDSHAKE
from egress.wado.conditional import held, not_modified
from egress.wado.errors import NotFound
from egress.wado.keys import BUILDER, CACHE, POOL, SETTINGS
from egress.wado.storage import unreadable
from egress.wado.urls import root_for, tenant_of, uid
from pipeline.stores import json_meta
from pipeline.stores.files import StorageLayout

DICOM_JSON = "application/dicom+json"
CACHED_AT_MOST = 1 << 20
ACCEL_REDIRECT = "X-Accel-Redirect"
READ_INLINE = 64 << 10
"""Files up to this size are read on the event loop: from the page cache that is microseconds."""


async def series_metadata(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    tenant = tenant_of(request, settings)
    study, series = uid(request, "study", "StudyInstanceUID"), uid(request, "series", "SeriesInstanceUID")
    builder = request.app[BUILDER]
    root = root_for(request, settings, tenant)
    pool = request.app[POOL]
    version = await json_meta.series_version(pool, tenant, study, series)
    if version is None:
        raise NotFound(f"no series {series} in study {study}")
    path = StorageLayout(settings.storage_root).series_metadata_path(tenant, study, series)
    if version.series_current and root == builder.root(tenant):
        response = await _file(request, path)
        if response is not None:
            return response
    cache = request.app[CACHE]
    key = cache.series_key(tenant, study, series)
    body = await cache.get(key, f"{version.version}/{root}")
    if body is not None:
        return await _built(request, body, f"{tenant}/{series}/{version.version}/{root}")
    async with pool.acquire() as conn:
        built = await builder.series(conn, tenant, study, series, root)
    if built is None:
        raise NotFound(f"no series {series} in study {study}")
    await _keep(request, key, f"{built[0]}/{root}", built[1])
    return await _built(request, built[1], f"{tenant}/{series}/{built[0]}/{root}")


async def study_metadata(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    tenant = tenant_of(request, settings)
    study = uid(request, "study", "StudyInstanceUID")
    builder = request.app[BUILDER]
    root = root_for(request, settings, tenant)
    pool = request.app[POOL]
    versions = await json_meta.study_versions(pool, tenant, study)
    if not versions:
        raise NotFound(f"no study {study}")
    path = StorageLayout(settings.storage_root).study_metadata_path(tenant, study)
    if all(v.in_study_file for v in versions) and root == builder.root(tenant):
        response = await _file(request, path)
        if response is not None:
            return response
    stamp = ",".join(f"{v.series_uid}:{v.version}" for v in sorted(versions, key=lambda v: v.series_uid))
    cache = request.app[CACHE]
    key = cache.study_key(tenant, study)
    field = hashlib.blake2b(f"{stamp}/{root}".encode(), digest_size=16).hexdigest()
    body = await cache.get(key, field)
    if body is None:
        async with pool.acquire() as conn:
            body = await builder.study(conn, tenant, study, root)
        if body is None:
            raise NotFound(f"no study {study}")
        # Built from a snapshot at least as new as ``versions``: kept under their stamp, it is
        # never older than what that stamp says.
        await _keep(request, key, field, body)
    return await _built(request, body, f"{tenant}/{study}/{stamp}/{root}")


async def instance_metadata(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    tenant = tenant_of(request, settings)
    study, series = uid(request, "study", "StudyInstanceUID"), uid(request, "series", "SeriesInstanceUID")
    sop = uid(request, "instance", "SOPInstanceUID")
    root = root_for(request, settings, tenant)
    async with request.app[POOL].acquire() as conn:
        body = await request.app[BUILDER].instance(conn, tenant, study, series, sop, root)
    if body is None:
        raise NotFound(f"no instance {sop} in series {series} of study {study}")
    return await _built(request, body, f"{tenant}/{sop}/{hashlib.blake2b(body, digest_size=12).hexdigest()}")


async def _keep(request: web.Request, key: str, field: str, body: bytes) -> None:
    """Cache an answer built on demand, when it is small: a regeneration deletes the key."""
    if len(body) <= CACHED_AT_MOST:
        await request.app[CACHE].put(key, body, request.app[SETTINGS].cache_ttl_s, field=field)


async def _file(request: web.Request, path: Path) -> web.StreamResponse | None:
    """The regenerated file (its ``.json.gz`` to clients that accept gzip), ETag and 304; None when
    it is not there.

    Not ``FileResponse``: its three executor hops per request (stat, open, read) cost more than
    reading a file of this size from the page cache. Files are replaced by rename, so a read sees
    one whole version.
    """
    settings = request.app[SETTINGS]
    prefix = settings.http_accel_redirect
    if prefix and request.headers.get(ACCEL_HANDSHAKE) == prefix:
        return _sent_by_nginx(path, settings.storage_root, prefix)
    gzipped = "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, "")
    target = path.with_name(path.name + ".gz") if gzipped else path
    root = settings.storage_root
    try:
        stat = target.stat()
        etag = f"{stat.st_mtime_ns:x}-{stat.st_size:x}{'-gz' if gzipped else ''}"
        if held(request, etag):
            response = not_modified(etag)
        else:
            body = (
                target.read_bytes()
                if stat.st_size <= READ_INLINE
                else await asyncio.to_thread(target.read_bytes)
            )
            response = web.Response(body=body, content_type=DICOM_JSON)
            if gzipped:
                response.headers[hdrs.CONTENT_ENCODING] = "gzip"
    except FileNotFoundError:
        return None
    except OSError as exc:  # not the database's: the storage's
        raise unreadable(root, f"metadata file {target.relative_to(root)}", exc) from exc
    response.etag = etag
    response.headers[hdrs.VARY] = "Accept-Encoding"
    return response


def _sent_by_nginx(path: Path, root: Path, prefix: str) -> web.StreamResponse | None:
    """An empty answer naming the file for nginx to send from its internal location over the
    storage root (``PACSFLOW_HTTP_ACCEL_REDIRECT``): its ``.json.gz`` to gzip clients
    (``gzip_static``), its own ETag and 304. Everything else was decided here: tenant, rights,
    whether the file is current."""
    try:
        path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unreadable(root, f"metadata file {path.relative_to(root)}", exc) from exc
    response = web.Response(content_type=DICOM_JSON)
    response.headers[ACCEL_REDIRECT] = prefix + quote(path.relative_to(root).as_posix())
    # nginx keeps this header of the answer (not ETag or Vary): without it, the Last-Modified nginx
    # sends would let a browser reuse a series' metadata for minutes while its study arrives.
    response.headers[hdrs.CACHE_CONTROL] = "no-cache"
    return response


async def _built(request: web.Request, body: bytes, stamp: str) -> web.StreamResponse:
    etag = hashlib.blake2b(stamp.encode(), digest_size=12).hexdigest()
    if held(request, etag):
        return not_modified(etag)
    response = web.Response(body=body, content_type=DICOM_JSON)
    response.etag = etag
    response.enable_compression()
    return response


def add_routes(app: web.Application, prefixes: tuple[str, ...]) -> None:
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/studies/{{study}}/metadata", study_metadata)
        app.router.add_get(f"{prefix}/studies/{{study}}/series/{{series}}/metadata", series_metadata)
        app.router.add_get(
            f"{prefix}/studies/{{study}}/series/{{series}}/instances/{{instance}}/metadata", instance_metadata
        )
