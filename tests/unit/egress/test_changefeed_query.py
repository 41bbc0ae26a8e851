"""The change feed's parameters (``egress.wado.changefeed.feed_query``) and the actions and states a
batch of stores gets (``pipeline.stores.changefeed.store_changes``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from multidict import MultiDict

from egress.wado.changefeed import DEFAULT_LIMIT, MAX_LIMIT, FeedQuery, feed_query
from egress.wado.errors import BadRequest
from pipeline.stores import changefeed
from pipeline.stores.changefeed import CREATE, CURRENT, REPLACED, UPDATE, store_changes


def parse(**values: str) -> FeedQuery:
    return feed_query(MultiDict(values))


def test_defaults_are_microsofts() -> None:
    assert parse() == FeedQuery(after=0, limit=DEFAULT_LIMIT, metadata=True, start=None, end=None, wait=0)


def test_names_are_case_insensitive_and_values_are_read() -> None:
    asked = parse(
        offset="42",
        Limit="200",
        includeMetadata="False",
        startTime="2024-05-01T12:00:00Z",
        endtime="2024-05-02T00:00:00+02:00",
        WAIT="60",
    )
    assert asked == FeedQuery(
        after=42,
        limit=MAX_LIMIT,
        metadata=False,
        start=datetime(2024, 5, 1, 12, tzinfo=UTC),
        end=datetime(2024, 5, 2, tzinfo=timezone(timedelta(hours=2))),
        wait=60,
    )


def test_a_time_without_a_zone_is_utc() -> None:
    assert parse(startTime="2024-05-01T12:00:00").start == datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"limit": "0"}, "limit=0: it must be from 1 to 200"),
        ({"limit": "1000"}, "limit=1000: it must be from 1 to 200"),
        ({"limit": "ten"}, "limit='ten' is not a whole number"),
        ({"offset": "-1"}, "offset=-1: it must be from 0"),
        ({"offset": "1.5"}, "offset='1.5' is not a whole number"),
        ({"wait": "999"}, "wait=999: it must be from 0 to 60"),
        ({"wait": "-1"}, "wait=-1: it must be from 0 to 60"),
        ({"includemetadata": "yes"}, "includemetadata='yes': it is true or false"),
        ({"startTime": "garbage"}, "startTime='garbage' is not an ISO 8601 date and time"),
        ({"endTime": "2024-05-01T12:00:00 02:00"}, "write it %2B"),
        ({"startTime": "2024-05-02", "endTime": "2024-05-01"}, "is not before endTime"),
        ({"since": "1"}, "unknown parameter 'since'"),
    ],
)
def test_bad_values_are_refused_with_the_reason(values: dict[str, str], says: str) -> None:
    with pytest.raises(BadRequest, match=None) as refused:
        parse(**values)
    assert says in str(refused.value)


def test_a_parameter_given_twice_is_refused() -> None:
    with pytest.raises(BadRequest, match="more than once"):
        feed_query(MultiDict([("limit", "1"), ("Limit", "2")]))


A, B = ("t", "1", "1.1", "1.1.1"), ("t", "1", "1.1", "1.1.2")


def test_new_instances_are_created_and_stored_ones_updated() -> None:
    assert store_changes([A, B], existed={B}) == [(CREATE, CURRENT), (UPDATE, CURRENT)]


def test_an_instance_twice_in_a_batch_is_created_then_updated_and_only_the_last_is_current() -> None:
    assert store_changes([A, B, A], existed=set()) == [
        (CREATE, REPLACED),
        (CREATE, CURRENT),
        (UPDATE, CURRENT),
    ]


def test_the_notified_channel_is_the_one_listened_to() -> None:
    # The statement names it literally (no SQL is built from strings): they must agree.
    assert f"pg_notify('{changefeed.CHANNEL}', t)" in changefeed._LOCK_AND_NOTIFY
