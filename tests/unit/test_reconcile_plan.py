"""The plan that spot_pool_reconcile reports in check mode (refill_plan.plan_report): plain values, a fixed `now`."""

from __future__ import annotations

import datetime

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import Observed
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import Policy
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import decide
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import plan_report
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import report_changes

NOW = datetime.datetime(2026, 11, 22, 10, 0, 0, tzinfo=datetime.timezone.utc)
POOL, POOL_ID = "ci", "3f9c0a7b5e21d864"
POLICY = Policy(orphan_grace_seconds=600, fallback_action="stop", may_launch=True, absent_grace_seconds=120)


def at(seconds_ago):
    return (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry(instance_id, ip="203.0.113.1", kind="spot", launched=3600):
    return {"id": instance_id, "ip": ip, "public_ip": ip, "private_ip": None, "type": kind,
            "availability_zone": "us-east-1a", "instance_type": "t3.micro", "launched_at": at(launched)}


def seen(instance_id, state="running", ip="203.0.113.9", kind="spot", launched=3600, **tags):
    return {"id": instance_id, "state": state, "public_ip": ip, "private_ip": "10.0.0.9",
            "availability_zone": "us-east-1a", "instance_type": "t3.micro", "launch_time": at(launched),
            "tags": {"ec2spot:pool": POOL, "ec2spot:pool-id": POOL_ID, "ec2spot:type": kind, **tags}}


def state(instances, leases=(), target=3, pending=()):
    return {"pool_name": POOL, "pool_id": POOL_ID, "target_size": target,
            "launch": {"instance_types": ["t3.micro"], "availability_zones": []},
            "instances": list(instances), "leases": list(leases), "pending_launches": list(pending),
            "refill": {}}


def report(pool, instances):
    observed = Observed({item["id"]: item for item in instances}, [])
    return plan_report(pool, observed, decide(pool, observed, NOW, POLICY))


def test_a_whole_pool_reports_nothing_to_do():
    pool = state([entry("i-1"), entry("i-2"), entry("i-3")])
    planned = report(pool, [seen("i-1"), seen("i-2"), seen("i-3")])
    assert planned == {"replay": [], "drop": [], "interrupted": [], "address": [], "end_expired": [],
                       "tag_leased": [], "mark_orphans": [], "end_orphans": [], "launch": 0, "replace_fallbacks": 0,
                       "reuse": [], "fallback_action": "stop"}
    assert report_changes(planned) is False


def test_every_kind_of_work_is_reported():
    expired = dict(entry("i-old"), leased_at=at(7200), lease_id="a" * 32, expires_at=at(60))
    held = dict(entry("i-held"), leased_at=at(60), lease_id="b" * 32, expires_at=at(-3600))
    pool = state([entry("i-up"), entry("i-new", ip=None, launched=30), entry("i-gone")], [expired, held],
                 pending=[{"token": "tok-1", "request": {}, "at": at(10)}])
    planned = report(pool, [
        seen("i-up"), seen("i-new"), seen("i-gone", state="terminated"),
        seen("i-old", **{"ec2spot:leased-at": at(7200)}), seen("i-held"),
        seen("i-stray", launched=1200), seen("i-marked", launched=3600, **{"ec2spot:orphan-since": at(900)}),
    ])
    assert planned["replay"] == ["tok-1"]
    assert planned["drop"] == ["i-gone"] and planned["interrupted"] == ["i-gone"]
    assert planned["address"] == ["i-new"]
    assert planned["end_expired"] == ["i-old"]
    assert planned["tag_leased"] == ["i-held"]
    assert planned["mark_orphans"] == ["i-stray"] and planned["end_orphans"] == ["i-marked"]
    assert planned["launch"] == 1 and planned["replace_fallbacks"] == 0
    assert report_changes(planned) is True


def test_a_young_stray_is_not_reported_as_an_orphan():
    pool = state([entry("i-1")], target=1)
    planned = report(pool, [seen("i-1"), seen("i-young", launched=60)])
    assert planned["mark_orphans"] == [] and planned["end_orphans"] == []
    assert report_changes(planned) is False


def test_fallbacks_to_replace_and_stopped_fallbacks_to_reuse():
    pool = state([entry("i-fb", kind="fallback"), entry("i-1")], target=3)
    kept = seen("i-kept", state="stopped", kind="fallback", **{"ec2spot:released-at": at(600)})
    planned = report(pool, [seen("i-fb", kind="fallback"), seen("i-1"), kept])
    assert planned["launch"] == 1 and planned["replace_fallbacks"] == 1
    assert planned["reuse"] == ["i-kept"]
    assert planned["mark_orphans"] == [], "a fallback kept on purpose is no orphan"


def test_reuse_is_reported_only_when_something_is_launched():
    pool = state([entry("i-1")], target=1)
    kept = seen("i-kept", state="stopped", kind="fallback", **{"ec2spot:released-at": at(600)})
    planned = report(pool, [seen("i-1"), kept])
    assert planned["reuse"] == [] and report_changes(planned) is False


def test_reuse_is_reported_when_slots_are_missing_and_no_fallback_is_replaced():
    """plan_report (mutation run: `launch or extra_spot` turned `and` lived)."""
    pool = state([entry("i-1")], target=2)
    kept = seen("i-kept", state="stopped", kind="fallback", **{"ec2spot:released-at": at(600)})
    planned = report(pool, [seen("i-1"), kept])
    assert (planned["launch"], planned["replace_fallbacks"], planned["reuse"]) == (1, 0, ["i-kept"])


def test_stopped_fallbacks_to_reuse_alone_are_no_change():
    """report_changes leaves `reuse` out (mutation run: renaming that key lived)."""
    assert report_changes({"fallback_action": "stop", "reuse": ["i-kept"], "launch": 0, "drop": []}) is False
