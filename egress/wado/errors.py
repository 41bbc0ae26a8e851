"""One error middleware: every failure is a status with a readable JSON body, never a bare 500."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import hdrs, web

from pipeline import log
from pipeline.errors import OutboxError, PacsflowError, StorageFull, StorageUnavailable
from pipeline.stores.postgres import TRANSIENT_ERRORS

_log = log.get(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"status": status, "error": message}),
        content_type="application/json",
    )


class BadRequest(PacsflowError):
    """The request cannot be answered as asked (400), with the reason."""


class NotFound(PacsflowError):
    """What the request names does not exist for this tenant (404)."""


class NotAcceptable(PacsflowError):
    """No representation the request accepts can be made (406), with the reason."""


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return problem(400, str(exc))
    except NotFound as exc:
        return problem(404, str(exc))
    except NotAcceptable as exc:
        return problem(406, str(exc))
    except StorageUnavailable as exc:
        return problem(503, str(exc))
    except StorageFull as exc:  # nothing was accepted: the client may send it again later
        _log.error("storage_full", path=request.path, error=str(exc))
        return problem(507, str(exc))
    except OutboxError as exc:
        _log.error("outbox_failed", path=request.path, error=str(exc))
        return problem(503, f"{exc}; nothing was accepted, try again")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        answer = problem(exc.status, exc.text or exc.reason)
        for name in (hdrs.ALLOW, hdrs.WWW_AUTHENTICATE, hdrs.RETRY_AFTER):  # what a 405, 401, 503 must say
            if name in exc.headers:
                answer.headers[name] = exc.headers[name]
        return answer
    except TRANSIENT_ERRORS as exc:
        _log.warning("index_unavailable", path=request.path, error=f"{type(exc).__name__}: {exc}")
        return problem(503, "the index database is not reachable; try again shortly")
    except Exception as exc:
        _log.exception("request_failed", path=request.path, error=f"{type(exc).__name__}: {exc}")
        return problem(500, f"internal error ({type(exc).__name__}); the server log has the details")
