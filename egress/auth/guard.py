"""The middleware that asks every DICOMweb request (and the analytics reports) for a bearer token.

Which right a request needs follows from its method: reads (GET, HEAD) need read, STOW-RS (POST)
write, DELETE delete. The reports of every tenant (``/analytics/reports``) need admin; one tenant's,
read on that tenant. CORS preflights and the capabilities (any OPTIONS: ``egress.wado.capabilities``),
``/health``, the viewer's and the analytics page's own files need nothing: they hold no patient data.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from egress.auth.keys import KeysUnavailable
from egress.auth.tokens import Identity, TokenJudge, Unauthenticated
from egress.wado.errors import problem
from pipeline import log
from pipeline.settings import Settings

_log = log.get(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JUDGE = web.AppKey("token_judge", TokenJudge)
IDENTITY = web.RequestKey("identity", Identity)
REALM = "pacsflow"
_GUARDED = re.compile(r"^/(?:tenants/([^/]*)/)?(dicomweb|analytics/reports)(?:/|$)")
_SCHEME = re.compile(r"^Bearer +", re.IGNORECASE)
_RIGHT_OF_METHOD = {hdrs.METH_POST: "write", hdrs.METH_DELETE: "delete"}


def needs(request: web.Request, default_tenant: str) -> tuple[str, str | None] | None:
    """(right, tenant) a request needs; tenant None: every tenant. None: no token needed."""
    # The path as the router matched it (``%2F`` kept), and the tenant the handler will be given:
    # ``/tenants/a%2Fb/dicomweb`` is routed, with tenant ``a/b``, though ``request.path`` reads
    # ``/tenants/a/b/dicomweb``.
    guarded = _GUARDED.match(request.rel_url.path_safe)
    if guarded is None or request.method == hdrs.METH_OPTIONS:
        return None
    tenant, area = guarded.groups()
    tenant = request.match_info.get("tenant", tenant)
    if area == "analytics/reports":
        return ("read", tenant) if tenant is not None else ("admin", None)
    return _RIGHT_OF_METHOD.get(request.method, "read"), tenant if tenant is not None else default_tenant


def guard(settings: Settings) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _refusal(request, settings) or await handler(request)

    return middleware


def expect_token(settings: Settings) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """STOW-RS's handler of ``Expect: 100-continue``, which aiohttp runs before any middleware: a
    client without the right is refused before it sends its body, not after."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        refused = await _refusal(request, settings)
        if refused is not None:
            return refused
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Expect: {request.headers[hdrs.EXPECT]} is not understood")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    return expect


async def _refusal(request: web.Request, settings: Settings) -> web.Response | None:
    """The answer refusing ``request``, or None when it may go on (its identity then kept)."""
    need = needs(request, settings.default_tenant)
    if need is None:
        return None
    if IDENTITY in request:
        return None  # judged already (the Expect handler, then the middleware)
    right, tenant = need
    scopes = settings.auth_scopes
    try:
        identity = await request.app[JUDGE].identity(_bearer(request))
    except Unauthenticated as exc:
        return _challenge(401, str(exc), "invalid_token")
    except KeysUnavailable as exc:
        _log.warning("auth_unavailable", path=request.path, error=str(exc))
        return problem(503, "the identity provider's keys cannot be fetched; try again shortly")
    if not identity.may(right):
        return _challenge(
            403,
            f"the token does not grant {right} (scope {scopes[right]})",
            "insufficient_scope",
            scopes[right],
        )
    if tenant is not None and not identity.may_use(tenant, settings.default_tenant):
        return _challenge(403, f"the token does not name tenant {tenant!r}", "insufficient_scope")
    request[IDENTITY] = identity
    return None


def _bearer(request: web.Request) -> str:
    given = request.headers.get(hdrs.AUTHORIZATION)
    if not given:
        raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
    scheme = _SCHEME.match(given)
    if scheme is None:
        raise Unauthenticated("the Authorization header is not 'Bearer <token>'")
    # The token's characters are checked when it is first judged (tokens.py), not on every request.
    return given[scheme.end() :].rstrip(" ")


def _challenge(status: int, reason: str, error: str, scope: str | None = None) -> web.Response:
    response = problem(status, reason)
    description = reason.replace("\\", "").replace('"', "'")
    value = f'Bearer realm="{REALM}", error="{error}", error_description="{description}"'
    if scope:
        value += f', scope="{scope}"'
    response.headers[hdrs.WWW_AUTHENTICATE] = value
    return response
