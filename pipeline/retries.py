"""Waiting out what is away for a while (a broker, a database): one retry policy, by tenacity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from pipeline import log

_log = log.get(__name__)


def describe(error: BaseException | None) -> str:
    """``Type: message``, and a database error's SQLSTATE: the code an operator looks up."""
    text = f"{type(error).__name__}: {error}"
    code = getattr(error, "sqlstate", None)
    return f"{text} (SQLSTATE {code})" if code else text


def until_it_works(
    event: str,
    on: tuple[type[BaseException], ...] = (Exception,),
    on_wait: Callable[[BaseException | None], None] | None = None,
    **context: Callable[[], Any] | Any,
) -> AsyncRetrying:
    """Retry forever on ``on``, waiting 0.25 s doubling up to 5 s, logging ``event`` before each wait.

    ``on_wait`` is called with the error before each wait too (e.g. to record why we wait).
    ``context`` values that are callables are evaluated when logging (e.g. a queue's length).
    Cancellation is never retried: it is not an ``Exception``. Calling the result awaits only
    coroutine functions; for any other awaitable, use ``async for attempt in ...: with attempt:``.
    """

    def log_wait(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        _log.warning(
            event,
            error=describe(error),
            retry_in_s=state.next_action.sleep if state.next_action is not None else None,
            **{key: value() if callable(value) else value for key, value in context.items()},
        )
        if on_wait is not None:
            on_wait(error)

    return AsyncRetrying(
        wait=wait_exponential(multiplier=0.25, max=5.0),
        retry=retry_if_exception_type(on),
        before_sleep=log_wait,
        reraise=True,
    )
