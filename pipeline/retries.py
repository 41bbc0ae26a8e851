"""Waiting out what is away for a while (a broker, a database): one retry policy, by tenacity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from pipeline import log

_log = log.get(__name__)


def until_it_works(
    event: str, on: tuple[type[BaseException], ...] = (Exception,), **context: Callable[[], Any] | Any
) -> AsyncRetrying:
    """Retry forever on ``on``, waiting 0.25 s doubling up to 5 s, logging ``event`` before each wait.

    ``context`` values that are callables are evaluated when logging (e.g. a queue's length).
    Cancellation is never retried: it is not an ``Exception``. Calling the result awaits only
    coroutine functions; for any other awaitable, use ``async for attempt in ...: with attempt:``.
    """

    def log_wait(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        _log.warning(
            event,
            error=f"{type(error).__name__}: {error}",
            retry_in_s=state.next_action.sleep if state.next_action is not None else None,
            **{key: value() if callable(value) else value for key, value in context.items()},
        )

    return AsyncRetrying(
        wait=wait_exponential(multiplier=0.25, max=5.0),
        retry=retry_if_exception_type(on),
        before_sleep=log_wait,
        reraise=True,
    )
