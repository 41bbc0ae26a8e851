"""Conditional GETs for answers whose ETag pacsflow makes itself (aiohttp's FileResponse does its
own)."""

from __future__ import annotations

from aiohttp import web


def held(request: web.Request, etag: str) -> bool:
    """Whether the client already holds this version: its If-None-Match names the ETag."""
    return any(tag.value == etag for tag in request.if_none_match or ())


def not_modified(etag: str) -> web.Response:
    response = web.Response(status=304)
    response.etag = etag
    return response
