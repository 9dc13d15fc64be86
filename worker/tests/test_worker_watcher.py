"""The IMDSv2 client and the watcher against the fake IMDS over real loopback HTTP."""

from __future__ import annotations

import json
import socket
import time

import pytest

from fake_imds import INSTANCE_ACTION, REBALANCE
from spot_drain_worker.drain import ADMISSION_STOPPED, DRAINING, SERVING, DrainSignal
from spot_drain_worker.metrics import WorkerMetrics
from spot_drain_worker.watcher import (
    ImdsClient,
    ImdsError,
    InterruptionWatcher,
    drain_deadline,
    parse_instance_action,
)


def make_watcher(url: str, **kwargs):
    signal = DrainSignal()
    watcher = InterruptionWatcher(ImdsClient(url, kwargs.pop("ttl", 60)), signal,
                                  poll_interval_seconds=kwargs.pop("poll", 5),
                                  grace_period_seconds=kwargs.pop("grace", 110),
                                  notice_margin_seconds=kwargs.pop("margin", 10), metrics=WorkerMetrics())
    return watcher, signal


def test_404_means_nothing(fake_imds):
    watcher, signal = make_watcher(fake_imds.url)
    watcher.poll_once()
    watcher.poll_once()
    assert signal.snapshot().state == SERVING
    assert fake_imds.count_gets(INSTANCE_ACTION, 404) == 2 and fake_imds.count_gets(REBALANCE, 404) == 2
    assert fake_imds.token_puts == [60]  # one token, reused while valid


def test_notice_drains_with_deadline_from_notice_time(fake_imds):
    watcher, signal = make_watcher(fake_imds.url, grace=110, margin=10)
    notice_at = time.time() + 60
    fake_imds.notice("terminate", at=notice_at)
    watcher.poll_once()
    snapshot = signal.snapshot()
    assert snapshot.state == DRAINING and "terminate" in snapshot.reason
    # The notice time has whole seconds; the deadline is that time minus the margin.
    assert abs(snapshot.deadline - (int(notice_at) - 10)) < 1.01


def test_grace_caps_a_far_notice_and_a_past_notice_means_now():
    assert drain_deadline(1000, 110, 5000, 10) == 1110
    assert drain_deadline(1000, 110, 1050, 10) == 1040
    assert drain_deadline(1000, 110, 900, 10) == 1000
    assert drain_deadline(1000, 110, None, 10) == 1110


def test_rebalance_only_stops_admission(fake_imds):
    watcher, signal = make_watcher(fake_imds.url)
    fake_imds.recommend_rebalance()
    watcher.poll_once()
    assert signal.snapshot().state == ADMISSION_STOPPED
    assert not signal.requested.is_set()  # no drain: the controller keeps waiting
    fake_imds.notice()
    watcher.poll_once()
    assert signal.snapshot().state == DRAINING


@pytest.mark.parametrize("body", ["<html>oops</html>", json.dumps({"action": "reboot"}), "[]", "",
                                  "[" * 100000 + "]" * 100000])
def test_an_answer_that_is_not_a_notice_is_an_error_not_a_drain(fake_imds, body):
    watcher, signal = make_watcher(fake_imds.url)
    fake_imds.set_raw_instance_action(body)
    with pytest.raises(ImdsError):
        watcher.poll_once()
    assert signal.snapshot().state == SERVING


def test_notice_without_time_drains_on_the_grace_period():
    notice = parse_instance_action(json.dumps({"action": "stop"}))
    assert notice.action == "stop" and notice.time is None


def test_token_refreshed_before_expiry_and_replaced_after_401(fake_imds):
    now = [1000.0]
    client = ImdsClient(fake_imds.url, token_ttl_seconds=60, clock=lambda: now[0])
    assert client.get(INSTANCE_ACTION) is None
    now[0] += 44  # within three quarters of the TTL: the token is reused
    assert client.get(INSTANCE_ACTION) is None
    assert fake_imds.token_puts == [60]
    now[0] += 2  # past three quarters of the TTL: refreshed before IMDS would refuse it
    assert client.get(INSTANCE_ACTION) is None
    assert fake_imds.token_puts == [60, 60]

    fake_imds.revoke_tokens()
    assert client.get(INSTANCE_ACTION) is None  # 401, new token, retried
    assert len(fake_imds.token_puts) == 3
    assert fake_imds.count_gets(INSTANCE_ACTION, 401) == 1


def test_server_errors_raise_and_back_off(fake_imds):
    watcher, signal = make_watcher(fake_imds.url, poll=0.5)
    fake_imds.fail_next(1, 500)
    with pytest.raises(ImdsError):
        watcher.poll_once()
    delays = []
    for errors in range(0, 8):
        watcher.consecutive_errors = errors
        delays.append(watcher.next_delay())
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and delays[-1] == 30.0


def test_unresponsive_imds_times_out_within_two_seconds():
    # A listener that accepts but never answers, like a black-holed link-local address.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        client = ImdsClient(f"http://127.0.0.1:{silent.getsockname()[1]}", 60, timeout=10)
        assert client.timeout <= 2
        started = time.monotonic()
        with pytest.raises(ImdsError):
            client.get(INSTANCE_ACTION)
        assert time.monotonic() - started < 2.5


def test_watcher_thread_survives_errors_and_counts_them(fake_imds):
    watcher, signal = make_watcher(fake_imds.url, poll=0.02)
    fake_imds.fail_next(2, 503)
    watcher.start()
    try:
        fake_imds.notice()
        assert signal.requested.wait(5)  # set by the drain request the notice makes
    finally:
        watcher.stop()
    assert signal.snapshot().state == DRAINING
    assert watcher.metrics.imds_errors._value.get() == 2
