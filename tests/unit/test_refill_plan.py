"""The refill's rules (refill_plan.py), one by one, with plain dicts and a fixed `now`: no moto, no client, no clock.

What a pass does with EC2 is covered by test_refill.py; here each rule of `decide` and `settle` is pinned down.
"""

from __future__ import annotations

import ast
import datetime
from pathlib import Path

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import entries
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import refill_plan
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import Observed
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import Outcome
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import Policy
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import decide
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import settle
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.refill_plan import surplus
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.pool import new_state
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.timefmt import isoformat
from tests.support.pool_entries import instance_id
from tests.support.pool_entries import pool_entry

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.timezone.utc)
POOL_ID = "0123456789abcdef"
LAUNCH = {"image_id": "ami-12345678", "instance_types": ["t3.micro", "t3.small"],
          "availability_zones": ["us-east-1a", "us-east-1b"]}
GRACE = 600
POLICY = Policy(orphan_grace_seconds=GRACE, fallback_action="stop", may_launch=True, absent_grace_seconds=120)
POOL_TAGS = {"ec2spot:pool": "p", "ec2spot:pool-id": POOL_ID}


def ago(seconds):
    return NOW - datetime.timedelta(seconds=seconds)


def pool(size=2, instances=(), leases=(), launch=None):
    state = new_state("p", size, dict(launch or LAUNCH))
    state["pool_id"] = POOL_ID
    state["instances"] = [dict(entry) for entry in instances]
    state["leases"] = [dict(lease) for lease in leases]
    return state


def described(entry_or_id, state="running", tags=None, launch_time=None, **fields):
    """An instance as observe() keeps it (ec2.instance_summary's shape), of a pool entry or of a bare id."""
    entry = entry_or_id if isinstance(entry_or_id, dict) else pool_entry(entry_or_id, ready=False)
    info = {"id": entry["id"], "state": state, "public_ip": entry.get("public_ip"),
            "private_ip": entry.get("private_ip"), "availability_zone": entry.get("availability_zone"),
            "subnet_id": entry.get("subnet_id"), "instance_type": entry.get("instance_type"),
            "lifecycle": "spot" if entry.get("type") == "spot" else "on-demand",
            "launch_time": launch_time or ago(3600), "state_reason": None,
            "tags": dict(POOL_TAGS, **{"ec2spot:type": entry.get("type") or "spot"})}
    info["tags"].update(tags or {})
    info.update(fields)
    return info


def seen(*infos, replayed=()):
    return Observed({info["id"]: info for info in infos}, list(replayed))


def lease_of(entry, leased_at=ago(7200), ttl=None):
    return entries.new_lease(entry, leased_at, ttl, lease_id="token-%s" % entry["id"])


def nothing_launched():
    return Outcome(entries=[], reused=[], settled=[], cooldowns=[], template=None, gone=[])


# -- dead entries and interruptions ---------------------------------------------------------------------------
def test_an_entry_whose_instance_ended_is_dropped():
    live, dead = pool_entry(1), pool_entry(2)
    state = pool(instances=[live, dead])
    observed = seen(described(live), described(dead, state="terminated"))
    plan = decide(state, observed, NOW, POLICY)
    assert dead["id"] in plan.dead and live["id"] not in plan.dead
    settled = settle(state, observed, plan, nothing_launched(), NOW)
    assert settled.dropped == [dead["id"]]
    assert [entry["id"] for entry in settled.state["instances"]] == [live["id"]]


def test_an_entry_ec2_does_not_list_yet_is_kept_while_young_and_dropped_after_the_grace():
    young = pool_entry(1, ready=False, launched_at=isoformat(ago(POLICY.absent_grace_seconds - 1)))
    old = pool_entry(2, ready=False, launched_at=isoformat(ago(POLICY.absent_grace_seconds)))
    undated = pool_entry(3, ready=False, launched_at=None)
    plan = decide(pool(size=3, instances=[young, old, undated]), seen(), NOW, POLICY)
    assert plan.dead == {old["id"], undated["id"]}
    # Absent is not interrupted: nothing cools down for an instance EC2 says nothing about.
    assert plan.interrupted == [] and plan.cooldowns == []


def test_a_live_entry_gets_its_addresses_when_settled():
    pending = pool_entry(1, ready=False)
    state = pool(size=1, instances=[pending])
    observed = seen(described(pending, public_ip="198.51.100.9", private_ip="10.0.0.9"))
    plan = decide(state, observed, NOW, POLICY)
    settled = settle(state, observed, plan, nothing_launched(), NOW)
    assert settled.state["instances"][0]["ip"] == "198.51.100.9"
    assert state["instances"][0]["ip"] is None  # settle changes nothing it was given


def test_an_idle_spot_entry_that_ended_was_interrupted_and_its_offering_cools_down():
    spot = pool_entry(1, availability_zone="us-east-1b", instance_type="t3.small")
    fallback = pool_entry(2, kind=entries.FALLBACK)
    plan = decide(pool(instances=[spot, fallback]),
                  seen(described(spot, state="terminated"), described(fallback, state="stopped")), NOW, POLICY)
    assert plan.interrupted == [spot["id"]]  # a fallback is On-Demand: never interrupted
    assert plan.cooldowns == [{"scope": "offering", "code": refill_plan.INTERRUPTED, "market": "spot",
                               "instance_type": "t3.small", "location": "us-east-1b"}]


def test_an_interruption_in_a_pool_without_zones_cools_down_the_type_anywhere():
    spot = pool_entry(1, availability_zone="us-east-1b")
    plan = decide(pool(instances=[spot], launch=dict(LAUNCH, availability_zones=[])),
                  seen(described(spot, state="shutting-down")), NOW, POLICY)
    assert [(c["instance_type"], c["location"]) for c in plan.cooldowns] == [("t3.micro", None)]


def test_an_interruption_in_a_pool_of_subnets_cools_down_the_subnet_offering():
    spot = pool_entry(1, availability_zone="us-east-1b", subnet_id="subnet-2")
    plan = decide(pool(instances=[spot], launch=dict(LAUNCH, availability_zones=[], subnet_ids=["subnet-2"])),
                  seen(described(spot, state="terminated")), NOW, POLICY)
    assert [c["location"] for c in plan.cooldowns] == ["subnet-2"]


# -- leases ------------------------------------------------------------------------------------------------------
def test_leases_expire_at_their_expires_at_and_never_without_one():
    expired = lease_of(pool_entry(1), leased_at=ago(3601), ttl=3600)
    due_now = lease_of(pool_entry(2), leased_at=ago(3600), ttl=3600)
    not_yet = lease_of(pool_entry(3), leased_at=ago(3599), ttl=3600)
    forever = lease_of(pool_entry(4), leased_at=ago(10 ** 7))
    assert "expires_at" not in forever
    state = pool(leases=[expired, due_now, not_yet, forever])
    plan = decide(state, seen(), NOW, POLICY)
    assert [lease["id"] for lease in plan.expired] == [expired["id"], due_now["id"]]
    settled = settle(state, seen(), plan, nothing_launched(), NOW)
    assert [lease["id"] for lease in settled.state["leases"]] == [not_yet["id"], forever["id"]]


def test_leases_without_the_leased_at_tag_are_tagged_unless_they_end_now():
    untagged, tagged = lease_of(pool_entry(1)), lease_of(pool_entry(2))
    expiring = lease_of(pool_entry(3), leased_at=ago(7200), ttl=60)
    unseen = lease_of(pool_entry(4))  # EC2 did not list it: nothing to tag
    observed = seen(described(untagged), described(tagged, tags={"ec2spot:leased-at": isoformat(ago(60))}),
                    described(expiring))
    plan = decide(pool(leases=[untagged, tagged, expiring, unseen]), observed, NOW, POLICY)
    assert plan.tag_leased == [untagged["id"]]


# -- orphans ------------------------------------------------------------------------------------------------------
def orphan(number, launched=GRACE + 1, mark=None, tags=None, **fields):
    """An instance of the pool's tags that the test's pool does not list, launched and marked seconds ago."""
    tags = dict(tags or {}, **({"ec2spot:orphan-since": isoformat(ago(mark))} if mark is not None else {}))
    return described(number, tags=tags, launch_time=ago(launched), **fields)


def test_an_orphan_is_marked_first_then_terminated_once_the_mark_is_older_than_the_grace():
    observed = seen(orphan(1), orphan(2, mark=GRACE - 1), orphan(3, mark=GRACE))
    plan = decide(pool(), observed, NOW, POLICY)
    assert plan.mark_orphans == [instance_id(1)]
    assert plan.end_orphans == [instance_id(3)]


def test_a_young_instance_is_no_orphan_yet():
    plan = decide(pool(), seen(orphan(1, launched=GRACE - 1), orphan(2, launched=GRACE - 1, mark=GRACE)), NOW, POLICY)
    assert plan.mark_orphans == [] and plan.end_orphans == []


def test_instances_the_pool_knows_or_keeps_are_never_orphans():
    idle, leased, replayed = pool_entry(1), lease_of(pool_entry(2)), pool_entry(3, ready=False)
    old_mark = GRACE * 2
    observed = seen(orphan(1, mark=old_mark), orphan(2, mark=old_mark), orphan(3, mark=old_mark),
                    orphan(4, mark=old_mark, tags={"ec2spot:released-at": isoformat(ago(60))}),
                    orphan(5, mark=old_mark, state="terminated"), orphan(6, mark=old_mark, state="shutting-down"),
                    replayed=[replayed])
    state = pool(instances=[idle], leases=[leased])
    plan = decide(state, observed, NOW, POLICY)
    assert plan.mark_orphans == [] and plan.end_orphans == []
    # ... and the same instance, unknown to the pool, is one.
    assert decide(pool(), seen(orphan(1, mark=old_mark)), NOW, POLICY).end_orphans == [instance_id(1)]


def test_the_orphan_grace_is_the_pools_own():
    observed = seen(orphan(1, launched=5, mark=5))
    assert decide(pool(), observed, NOW, POLICY).end_orphans == []
    assert decide(pool(), observed, NOW, POLICY._replace(orphan_grace_seconds=5)).end_orphans == [instance_id(1)]


# -- launches -----------------------------------------------------------------------------------------------------
def test_what_is_missing_is_launched_dead_entries_included():
    live, dead = pool_entry(1), pool_entry(2)
    plan = decide(pool(size=3, instances=[live, dead]), seen(described(live), described(dead, state="terminated")),
                  NOW, POLICY)
    assert (plan.launch, plan.extra_spot) == (2, 0)


def test_a_replayed_fleet_answer_fills_slots_and_is_not_launched_again():
    replayed = [pool_entry(5, ready=False), pool_entry(6, ready=False)]
    plan = decide(pool(size=3), seen(replayed=replayed), NOW, POLICY)
    assert (plan.launch, plan.extra_spot) == (1, 0)


def test_idle_fallbacks_are_replaced_by_extra_spot_instances():
    spot, fallback = pool_entry(1), pool_entry(2, kind=entries.FALLBACK)
    observed = seen(described(spot), described(fallback))
    plan = decide(pool(size=2, instances=[spot, fallback]), observed, NOW, POLICY)
    assert (plan.launch, plan.extra_spot) == (0, 1)
    # Two fallbacks and a slot missing: one launch for the slot, two Spot ones for the fallbacks.
    fallbacks = [pool_entry(n, kind=entries.FALLBACK) for n in (1, 2)]
    plan = decide(pool(size=3, instances=fallbacks), seen(*map(described, fallbacks)), NOW, POLICY)
    assert (plan.launch, plan.extra_spot) == (1, 2)


def test_a_pass_that_may_not_launch_launches_nothing():
    fallback = pool_entry(1, kind=entries.FALLBACK)
    plan = decide(pool(size=3, instances=[fallback]), seen(described(fallback)), NOW,
                  POLICY._replace(may_launch=False))
    assert (plan.launch, plan.extra_spot) == (0, 0)


@pytest.mark.parametrize("target", range(0, 5))
@pytest.mark.parametrize("spots", range(0, 5))
@pytest.mark.parametrize("fallbacks", range(0, 5))
def test_one_pass_never_launches_more_than_the_target_less_the_spot_entries(target, spots, fallbacks):
    """The cap: what one pass launches (missing slots plus Spot replacements) never takes the pool's Spot
    instances past its target, and a pool at or above its target launches nothing for missing slots."""
    held = [pool_entry(n) for n in range(spots)] + [pool_entry(10 + n, kind=entries.FALLBACK) for n in range(fallbacks)]
    plan = decide(pool(size=target, instances=held), seen(*map(described, held)), NOW, POLICY)
    assert plan.launch == max(0, target - spots - fallbacks)
    assert plan.extra_spot <= fallbacks
    assert plan.launch + plan.extra_spot <= max(0, target - spots)
    # ... and within that cap every fallback gets its replacement.
    assert plan.launch + plan.extra_spot == max(0, min(target - spots, fallbacks + plan.launch))


def test_stopped_fallbacks_the_pool_kept_are_offered_for_reuse():
    kept = described(7, state="stopped", tags={"ec2spot:released-at": isoformat(ago(60)), "ec2spot:type": "fallback"})
    elsewhere = described(8, state="stopped", availability_zone="us-west-2a",
                          tags={"ec2spot:released-at": isoformat(ago(60)), "ec2spot:type": "fallback"})
    plan = decide(pool(), seen(kept, elsewhere), NOW, POLICY)
    assert [item["id"] for item in plan.reusable] == [kept["id"]]
    assert sorted(plan.kept) == sorted([kept["id"], elsewhere["id"]])


# -- the surplus ---------------------------------------------------------------------------------------------------
def ids(found):
    return [entry["id"] for entry in found]


def test_no_surplus_in_a_pool_at_its_target():
    assert surplus([pool_entry(1), pool_entry(2, kind=entries.FALLBACK)], 2) == []


def test_fallbacks_are_retired_first():
    spots = [pool_entry(1), pool_entry(2)]
    fallback = pool_entry(3, kind=entries.FALLBACK)
    assert ids(surplus(spots + [fallback], 2)) == [fallback["id"]]


def test_a_ready_fallback_waits_for_its_ready_spot_replacement():
    fallback = pool_entry(1, kind=entries.FALLBACK)
    replacement = pool_entry(2, ready=False)
    assert surplus([fallback, replacement], 1) == []  # the replacement is not ready: the fallback stays, and so does it
    assert ids(surplus([fallback, pool_entry(2)], 1)) == [fallback["id"]]


def test_pending_entries_go_before_ready_ones():
    """Pending first, in the list (the order they are reported and ended in); which ready ones may go at all is the
    ready count's rule above."""
    ready = pool_entry(1, launched_at="2026-11-22T09:00:00Z")
    newer_ready = pool_entry(2, launched_at="2026-11-22T11:00:00Z")
    pending = pool_entry(3, ready=False, launched_at="2026-11-22T08:00:00Z")
    assert ids(surplus([ready, newer_ready, pending], 1)) == [pending["id"], newer_ready["id"]]
    ready_fallback = pool_entry(4, kind=entries.FALLBACK)
    pending_fallback = pool_entry(5, kind=entries.FALLBACK, ready=False)
    assert ids(surplus([ready_fallback, pending_fallback, ready], 1)) == [pending_fallback["id"], ready_fallback["id"]]


def test_the_newest_spot_entry_goes_first():
    old = pool_entry(1, launched_at="2026-11-22T09:00:00Z")
    new = pool_entry(2, launched_at="2026-11-22T11:00:00Z")
    middle = pool_entry(3, launched_at="2026-11-22T10:00:00Z")
    assert ids(surplus([old, new, middle], 1)) == [new["id"], middle["id"]]


# -- settle: the pass applied to the pool as it is by then -----------------------------------------------------
def test_settle_adds_what_was_launched_unless_a_get_leased_it_meanwhile():
    state = pool(size=3, instances=[pool_entry(1)])
    observed = seen(described(pool_entry(1)))
    plan = decide(state, observed, NOW, POLICY)
    launched = [pool_entry(2, ready=False), pool_entry(3, ready=False)]
    current = pool(size=3, instances=[pool_entry(1), launched[0]], leases=[lease_of(launched[1])])
    outcome = nothing_launched()._replace(entries=launched)
    settled = settle(current, observed, plan, outcome, NOW)
    assert ids(settled.state["instances"]) == [instance_id(1), instance_id(2)]
    assert ids(settled.state["leases"]) == [instance_id(3)]


def test_settle_retires_the_surplus_and_keeps_stopped_fallbacks_for_reuse():
    fallback, spots = pool_entry(1, kind=entries.FALLBACK), [pool_entry(2), pool_entry(3)]
    state = pool(size=2, instances=[fallback] + spots)
    observed = seen(*map(described, [fallback] + spots))
    plan = decide(state, observed, NOW, POLICY)
    settled = settle(state, observed, plan, nothing_launched(), NOW)
    assert ids(settled.retire) == [fallback["id"]] and ids(settled.state["instances"]) == ids(spots)
    assert settled.state["kept_fallbacks"] == [{"id": fallback["id"], "instance_type": "t3.micro",
                                                "availability_zone": "us-east-1a", "released_at": isoformat(NOW)}]
    terminating = decide(state, observed, NOW, POLICY._replace(fallback_action="terminate"))
    assert settle(state, observed, terminating, nothing_launched(), NOW).state["kept_fallbacks"] == []


def test_settle_keeps_no_fallback_that_is_gone_or_started_again():
    expired = lease_of(pool_entry(1, kind=entries.FALLBACK), ttl=60)
    gone = lease_of(pool_entry(2, kind=entries.FALLBACK), ttl=60)
    reused = described(3, state="stopped", tags={"ec2spot:released-at": isoformat(ago(60)), "ec2spot:type": "fallback"})
    state = pool(leases=[expired, gone])
    observed = seen(reused)
    plan = decide(state, observed, NOW, POLICY)
    outcome = nothing_launched()._replace(reused=[reused["id"]], gone=[gone["id"]])
    assert ids(settle(state, observed, plan, outcome, NOW).state["kept_fallbacks"]) == [expired["id"]]


def test_settle_records_the_settled_launches_the_cool_downs_the_template_and_the_time():
    state = pool()
    state["pending_launches"] = [{"token": "answered", "request": {}, "at": isoformat(ago(5))},
                                 {"token": "unanswered", "request": {}, "at": isoformat(ago(5))}]
    cooldown = {"scope": "market", "market": "spot", "instance_type": None, "location": None, "code": "X",
                "until": isoformat(NOW)}
    template = {"LaunchTemplateId": "lt-1", "Version": "2", "owned": True}
    plan = decide(state, seen(), NOW, POLICY)
    outcome = nothing_launched()._replace(settled=["answered"], cooldowns=[cooldown], template=template)
    settled = settle(state, seen(), plan, outcome, NOW).state
    assert [pending["token"] for pending in settled["pending_launches"]] == ["unanswered"]
    assert settled["cooldowns"] == [cooldown] and settled["launch"]["template"] == template
    assert settled["refill"]["verified_at"] == isoformat(NOW)
    assert state["launch"].get("template") is None and state["refill"]["verified_at"] is None


def test_the_rules_import_no_aws_code():
    """decide and settle stay pure because their module cannot reach a client: it imports only the plain-value
    modules (not ec2.py, the launcher, the store or the job control), in any form, anywhere in it."""
    tree = ast.parse(Path(refill_plan.__file__).read_text())
    siblings = {node.module or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.level for alias in node.names}
    absolute = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and not node.level}
    assert siblings <= {"identity", "entries", "timefmt", "defaults"}, siblings
    assert absolute <= {"__future__", "collections"}, absolute


# -- rules the mutation run found untested (docs/mutation.md) -------------------------------------------------------
def test_the_kept_fallbacks_are_described_by_id_type_zone_and_release_time():
    """decide's `kept` (mutation run: renaming any of its keys or reading another lived)."""
    released = isoformat(ago(60))
    kept = described(7, state="stopped", tags={"ec2spot:released-at": released, "ec2spot:type": "fallback"})
    plan = decide(pool(), seen(kept), NOW, POLICY)
    assert plan.kept == {kept["id"]: {"id": kept["id"], "instance_type": kept["instance_type"],
                                      "availability_zone": kept["availability_zone"], "released_at": released}}


def test_an_orphan_sorted_after_an_instance_the_pool_knows_is_still_found():
    """decide's orphan loop goes on past a known instance (mutation run: `continue` turned `break` lived)."""
    known = pool_entry(1)
    plan = decide(pool(instances=[known]), seen(described(known), orphan(2)), NOW, POLICY)
    assert plan.mark_orphans == [instance_id(2)]


def test_the_absent_grace_is_the_policy_s():
    """decide passes policy.absent_grace_seconds to is_alive (mutation run: dropping it lived: the default is 120)."""
    young = pool_entry(1, launched_at=isoformat(ago(200)))
    policy = POLICY._replace(absent_grace_seconds=300)
    assert decide(pool(instances=[young]), seen(), NOW, policy).dead == frozenset()


def test_a_surplus_never_takes_the_ready_count_under_the_target():
    """surplus counts the ready entries it retires (mutation run: `ready -= 1` turned `+=` lived)."""
    first, second = pool_entry(1, kind=entries.FALLBACK), pool_entry(2, kind=entries.FALLBACK)
    pending = pool_entry(3, ready=False)
    assert ids(surplus([first, second, pending], 1)) == [first["id"]]


def test_settle_records_a_new_template_and_keeps_the_rest_of_launch_and_refill():
    """settle (mutation run: a template None rewriting launch, and launch or refill losing their other keys lived)."""
    state = pool(launch=dict(LAUNCH, template="lt-old"))
    state["refill"] = dict(state["refill"], pid=4242)
    plan = decide(state, seen(), NOW, POLICY)
    renewed = settle(state, seen(), plan, nothing_launched()._replace(template="lt-new"), NOW).state
    assert renewed["launch"] == dict(LAUNCH, template="lt-new")
    assert renewed["refill"]["pid"] == 4242 and renewed["refill"]["verified_at"] == isoformat(NOW)
    unchanged = settle(state, seen(), plan, nothing_launched(), NOW).state
    assert unchanged["launch"]["template"] == "lt-old"
