"""How the web server's change feed notices wake waiting requests (``egress.wado.changefeed.Notices``)."""

from __future__ import annotations

import asyncio

from egress.wado.changefeed import Notices


def test_a_notice_wakes_its_tenants_waiters_only_and_the_next_wait_is_fresh() -> None:
    notices = Notices()
    with notices.watching("a"), notices.watching("b"):
        a, b = notices.next("a"), notices.next("b")
        assert notices.next("a") is a  # two requests of a tenant share one
        notices.notify("a")
        assert a.is_set() and not b.is_set()
        assert not notices.next("a").is_set()  # a reader that read again waits for the next one


def test_a_tenant_no_request_waits_for_keeps_nothing() -> None:
    notices = Notices()
    with notices.watching("a"):
        with notices.watching("a"):
            first = notices.next("a")
        assert notices.next("a") is first  # still watched by the outer request
    assert not notices._waking and not notices._watching


def test_wake_all_wakes_every_waiter() -> None:
    async def scenario() -> None:
        notices = Notices()
        with notices.watching("a"), notices.watching("b"):
            waiting = [asyncio.create_task(notices.next(t).wait()) for t in ("a", "b")]
            await asyncio.sleep(0)
            notices.wake_all()
            await asyncio.wait_for(asyncio.gather(*waiting), 1)

    asyncio.run(scenario())
