"""Times as the pool keeps them (timefmt.py): UTC to the second, with plain values."""

from __future__ import annotations

import datetime
import time

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.timefmt import isoformat
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.timefmt import parse_time

TOKYO = datetime.timezone(datetime.timedelta(hours=9))


@pytest.fixture
def local_time_not_utc(monkeypatch):
    """The process's local time zone set to one that is not UTC, so a conversion to local time shows."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_time_is_written_in_utc_whatever_its_zone_or_the_machine_s(local_time_not_utc):
    """isoformat (mutation run: `astimezone(utc)` turned `astimezone(None)`, local time, lived on a UTC machine)."""
    moment = datetime.datetime(2026, 11, 22, 19, 0, 0, tzinfo=TOKYO)
    assert isoformat(moment) == "2026-11-22T10:00:00Z"


def test_parse_time_is_isoformat_s_inverse_and_names_a_malformed_time():
    """parse_time (mutation run: the ValueError without its text, or a TypeError instead, lived)."""
    assert parse_time("2026-11-22T10:00:00Z") == datetime.datetime(2026, 11, 22, 10, tzinfo=datetime.timezone.utc)
    assert parse_time("") is None and parse_time(None) is None
    # strptime's own message, which parse_time replaces.
    strptime_says = r"^time data '2026-11-22 10:00:00' does not match format '%Y-%m-%dT%H:%M:%SZ'$"
    with pytest.raises(ValueError, match=strptime_says):
        parse_time("2026-11-22 10:00:00")
