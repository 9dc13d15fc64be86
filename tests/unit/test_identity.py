"""Which instances and templates belong to a pool: the selection rules, with plain values (no EC2)."""

from __future__ import annotations

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import identity
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations as ops

A = "aaaaaaaaaaaaaaaa"
B = "bbbbbbbbbbbbbbbb"


def inst(instance_id, state="running", pool="ci", pool_id=A, kind="spot", released=None, itype="t3.micro",
         zone="us-east-1a", subnet=None):
    tags = {"ec2spot:pool": pool, "ec2spot:type": kind}
    if pool_id:
        tags["ec2spot:pool-id"] = pool_id
    if released:
        tags["ec2spot:released-at"] = released
    return {"id": instance_id, "state": state, "tags": tags, "instance_type": itype, "availability_zone": zone,
            "subnet_id": subnet}


def state_of(*ids, leases=(), kind="spot"):
    return {"instances": [{"id": i, "type": kind} for i in ids], "leases": [{"id": i, "type": kind} for i in leases]}


def test_pool_ids_are_random_16_hex_digits_and_name_the_template():
    ids = {identity.new_pool_id() for _n in range(50)}
    assert len(ids) == 50 and all(identity.valid_pool_id(i) for i in ids)
    for bad in ("", None, "ABCDEFABCDEFABCD", "aaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaa\n", "../aaaaaaaaaaaaa"):
        assert not identity.valid_pool_id(bad), bad
    assert identity.template_name("ci", A) == "ec2spot-ci-" + A != identity.template_name("ci", B)


def test_a_pool_is_what_carries_its_id_or_what_its_state_lists():
    named = [inst("i-a1"), inst("i-b1", pool_id=B), inst("i-old", pool_id=None), inst("i-x", pool="other")]
    assert [i["id"] for i in identity.mine(named, "ci", A)] == ["i-a1"]
    assert [i["id"] for i in identity.mine(named, "ci", B)] == ["i-b1"]
    # A pool made before pool ids owns only what its state lists; an id of None matches nothing by tag.
    assert [i["id"] for i in identity.mine(named, "ci", None, listed=["i-old"])] == ["i-old"]
    assert identity.mine(named, "ci", None) == []
    assert not identity.is_member({"ec2spot:pool": "ci"}, "ci", None)


def test_other_pools_of_the_name_are_counted_by_id_with_their_templates():
    named = [inst("i-a1"), inst("i-a2", state="stopped", kind="fallback", released="t"), inst("i-b1", pool_id=B),
             inst("i-b2", pool_id=B, state="pending"), inst("i-dead", pool_id=B, state="terminated"),
             inst("i-old", pool_id=None), inst("i-old-stopped", pool_id=None, state="stopped"),
             inst("i-x", pool="other", pool_id=B)]
    templates = [{"name": "ec2spot-ci-" + B, "id": "lt-b", "tags": {"ec2spot:pool": "ci", "ec2spot:pool-id": B}},
                 {"name": "ec2spot-ci", "id": "lt-old", "tags": {"ec2spot:pool": "ci"}},
                 {"name": "ec2spot-ci-" + A, "id": "lt-a", "tags": {"ec2spot:pool": "ci", "ec2spot:pool-id": A}}]
    found = identity.other_pools(named, templates, "ci", A)
    assert found == {B: {"instances": 2, "templates": ["ec2spot-ci-" + B]},
                     None: {"instances": 1, "templates": ["ec2spot-ci"]}}
    # Instances the pool lists are its own, whatever their tags (a pool made before pool ids, adopting one).
    assert identity.other_pools(named, [], "ci", A, listed=["i-old", "i-b1", "i-b2"]) == {}
    assert identity.other_pools([], [], "ci", A) == {}
    message = identity.collision_message("ci", "us-east-1", found)
    for part in ("'ci'", "us-east-1", "pool id " + B, "2 instances", "ec2spot-ci-" + B, "before pool ids",
                 "one store shared by the controllers", "same state file", "another pool_name"):
        assert part in message, (part, message)


def test_pools_of_a_name_count_instances_and_the_leases_their_tags_show():
    leased = {"ec2spot:leased-at": "2026-01-01T00:00:00Z"}
    named = [inst("i-a1"), inst("i-a2"), inst("i-b1", pool_id=B), inst("i-old", pool_id=None),
             inst("i-gone", state="terminated"), inst("i-kept", state="stopped", kind="fallback",
                                                      released="2026-01-02T00:00:00Z"),
             inst("i-other", pool="cd")]
    # i-a2 and i-b1 are leased; the released fallback i-kept keeps its old leased-at tag and is not.
    for item in (named[1], named[2], named[5]):
        item["tags"].update(leased)
    found = identity.pools_of_name(named, "ci")
    assert found == {A: {"instances": 3, "leased": 1}, B: {"instances": 1, "leased": 1},
                     None: {"instances": 1, "leased": 0}}
    words = identity.describe_pools_of_name(found)
    assert words == ("a pool made before pool ids (no ec2spot:pool-id tag) (1 instance, 0 leased); pool id %s "
                     "(3 instances, 1 leased); pool id %s (1 instance, 1 leased)" % (A, B))


def test_without_a_pool_in_the_store_only_the_named_pool_id_is_acted_on():
    one = {A: {"instances": 2, "leased": 1}, None: {"instances": 1, "leased": 0}}
    two = dict(one, **{B: {"instances": 1, "leased": 0}})
    decide = identity.pool_id_without_store
    # No pool in the store (lost, or never this controller's): nothing is adopted, whatever EC2 shows.
    pool_id, refusal = decide(one, None, damaged=False)
    assert pool_id is None and "pool id %s (2 instances, 1 leased)" % A in refusal and "before pool ids" not in refusal
    pool_id, refusal = decide(two, None, damaged=False)
    assert pool_id is None and A in refusal and B in refusal
    # Named: exactly that one (even one EC2 does not show), with or without a store.
    assert decide(two, B, damaged=False) == (B, None)
    assert decide({}, B, damaged=True) == (B, None)
    # Nothing of the name carries an id: nothing to act on, nothing to refuse.
    assert decide({None: {"instances": 1, "leased": 0}}, None, damaged=False) == (None, None)
    assert decide({}, None, damaged=False) == (None, None)
    # A damaged pool of this store was its own: the only id of the name is its; between several it does not guess.
    assert decide(one, None, damaged=True) == (A, None)
    pool_id, refusal = decide(two, None, damaged=True)
    assert pool_id is None and "several pools" in refusal and A in refusal and B in refusal


def test_terminate_selects_only_its_own_pool_and_ends_the_kept_fallbacks():
    kept = {"state": "stopped", "kind": "fallback", "released": "2026-01-01T00:00:00Z"}
    named = [inst("i-idle"), inst("i-leased"), inst("i-orphan"), inst("i-kept", **kept),
             inst("i-other", pool_id=B), inst("i-other-kept", pool_id=B, **kept),
             inst("i-old", pool_id=None), inst("i-gone", state="terminated")]
    state = state_of("i-idle", leases=["i-leased"])
    got = ops.select_for_terminate(state, named, "ci", A)
    assert got == (["i-idle", "i-kept", "i-leased", "i-orphan"], [], ["i-orphan"], ["i-kept"])
    # Without orphans, the kept fallbacks are still the pool's own: no pool is left to reuse them.
    assert ops.select_for_terminate(state, named, "ci", A, include_orphans=False) == \
        (["i-idle", "i-kept", "i-leased"], [], [], ["i-kept"])
    # fallback_action=stop: running fallbacks are stopped, kept ones stay stopped.
    fallbacks = [inst("i-fb", kind="fallback"), named[3]]
    assert ops.select_for_terminate(state_of("i-fb", kind="fallback"), fallbacks, "ci", A, "stop") == \
        ([], ["i-fb"], [], ["i-kept"])
    # A pool made before pool ids ends only what its state lists.
    assert ops.select_for_terminate(state_of("i-old"), named, "ci", None) == (["i-old"], [], [], [])


def test_reusable_fallbacks_are_this_pools_stopped_ones_of_an_offering_it_still_asks_for():
    launch = {"instance_types": ["t3.micro", "t3.small"], "availability_zones": ["us-east-1a"]}
    named = [inst("i-2", state="stopped", kind="fallback", released="2026-01-02T00:00:00Z"),
             inst("i-1", state="stopped", kind="fallback", released="2026-01-01T00:00:00Z", itype="t3.small"),
             inst("i-running", kind="fallback", released="2026-01-01T00:00:00Z"),
             inst("i-not-kept", state="stopped", kind="fallback"),
             inst("i-spot", state="stopped", released="2026-01-01T00:00:00Z"),
             inst("i-other", state="stopped", kind="fallback", released="2026-01-01T00:00:00Z", pool_id=B),
             inst("i-type", state="stopped", kind="fallback", released="2026-01-01T00:00:00Z", itype="m5.large"),
             inst("i-zone", state="stopped", kind="fallback", released="2026-01-01T00:00:00Z", zone="us-east-1b")]
    assert [i["id"] for i in identity.reusable_fallbacks(named, launch, "ci", A)] == ["i-1", "i-2"]
    anywhere = dict(launch, availability_zones=[])
    assert [i["id"] for i in identity.reusable_fallbacks(named, anywhere, "ci", A)] == ["i-1", "i-zone", "i-2"]
    subnets = {"instance_types": ["t3.micro"], "subnet_ids": ["subnet-1"]}
    in_subnet = [inst("i-s", state="stopped", kind="fallback", released="t", subnet="subnet-1"),
                 inst("i-t", state="stopped", kind="fallback", released="t", subnet="subnet-2")]
    assert [i["id"] for i in identity.reusable_fallbacks(in_subnet, subnets, "ci", A)] == ["i-s"]
    kept = [i["id"] for i in identity.kept_fallbacks(named, "ci", A)]
    assert kept == ["i-2", "i-1", "i-running", "i-spot", "i-type", "i-zone"]


def test_what_another_init_made_in_the_same_store_meanwhile_is_no_collision():
    """An init found no pool in its store, then instances of the name in EC2: the store, read again, decides. The
    pool it now holds (another init made it meanwhile) is not another pool; what it does not account for is."""
    found = {A: {"instances": 2, "templates": ["ec2spot-ci-" + A]}}
    # Read again: the pool of those instances is there now, so it was created meanwhile (nothing collides).
    assert identity.colliding(found, {"pool_id": A, "instances": [], "leases": []}) == {}
    # Read again: still no pool, so they are another store's pool: the collision, as before.
    assert identity.colliding(found, None) == found
    # A pool of another id made meanwhile does not explain them; nor does a pool made before pool ids.
    assert identity.colliding(found, {"pool_id": B}) == found
    old = {None: {"instances": 1, "templates": []}}
    assert identity.colliding(old, {"pool_id": None}) == old
    # Only the stored pool's part is left out: another store's pool of the name still collides.
    both = dict(found, **{B: {"instances": 1, "templates": []}})
    assert identity.colliding(both, {"pool_id": A}) == {B: {"instances": 1, "templates": []}}


def test_other_pools_skip_what_is_not_another_pool_and_go_on_past_it():
    """other_pools (mutation run: each `continue` turned `break`, the live states of a pool without ids renamed,
    and the record of a pool seen by its template alone lived)."""
    named = [inst("i-listed", pool_id=B), inst("i-elsewhere", pool="other", pool_id=B), inst("i-mine"),
             inst("i-old-stopped", state="stopped", pool_id=None), inst("i-b", pool_id=B)]
    assert identity.other_pools(named, [], "ci", A, listed=["i-listed"]) == {B: {"instances": 1, "templates": []}}
    assert identity.other_pools([inst("i-old", state="pending", pool_id=None)], [], "ci", A) == \
        {None: {"instances": 1, "templates": []}}
    templates = [{"name": "lt-other", "id": "lt-1", "tags": {"ec2spot:pool": "other", "ec2spot:pool-id": B}},
                 {"name": "lt-mine", "id": "lt-2", "tags": {"ec2spot:pool": "ci", "ec2spot:pool-id": A}},
                 {"name": "lt-b", "id": "lt-3", "tags": {"ec2spot:pool": "ci", "ec2spot:pool-id": B}}]
    assert identity.other_pools([], templates, "ci", A) == {B: {"instances": 0, "templates": ["lt-b"]}}


def test_reusable_fallbacks_go_on_past_one_of_another_subnet_or_zone():
    """reusable_fallbacks (mutation run: the subnet and zone filters' `continue` turned `break` lived)."""
    def stopped(instance_id, **where):
        return inst(instance_id, state="stopped", kind="fallback", released="2026-11-22T10:00:00Z", **where)

    launch = {"instance_types": ["t3.micro"], "subnet_ids": ["subnet-1"]}
    found = identity.reusable_fallbacks([stopped("i-x", subnet="subnet-9"), stopped("i-s", subnet="subnet-1")],
                                        launch, "ci", A)
    assert [item["id"] for item in found] == ["i-s"]
    launch = {"instance_types": ["t3.micro"], "availability_zones": ["us-east-1a"]}
    found = identity.reusable_fallbacks([stopped("i-x", zone="us-east-1f"), stopped("i-z")], launch, "ci", A)
    assert [item["id"] for item in found] == ["i-z"]


WHERE = "/state/ci.json"


def refusal(call, *args, **kwargs):
    with pytest.raises(InvalidRequest) as caught:
        call(*args, **kwargs)
    return caught.value


def test_a_pool_id_asked_for_must_be_one_and_agree_with_the_store():
    identity.check_pool_id(None, A, WHERE)
    identity.check_pool_id(A, A, WHERE)
    identity.check_pool_id(B, None, WHERE)  # the store says none: the id asked for is not contradicted
    bad = refusal(identity.check_pool_id, "ABC", A, WHERE)
    assert "'ABC' is not a pool id: 16 lower-case hex digits" in bad.message
    error = refusal(identity.check_pool_id, B, A, WHERE, "; leave pool_id out")
    assert error.message == "pool_id %s does not match the pool id %s in %s; leave pool_id out" % (B, A, WHERE)


def test_the_pool_id_taken_from_tags_is_refused_with_the_ids_it_could_be():
    one = {A: {"instances": 2, "leased": 0}}
    two = {A: one[A], B: {"instances": 1, "leased": 1}, None: {"instances": 1, "leased": 0}}
    take = identity.pool_id_from_tags
    assert take(two, B, "ci", WHERE, None, "end it") == B
    assert take(one, None, "ci", WHERE, "damaged", "end it") == A
    assert take({None: {"instances": 1, "leased": 0}}, None, "ci", WHERE, None, "end it") is None
    lost = refusal(take, one, None, "ci", WHERE, None, "rebuild it")
    assert lost.message.startswith("pool 'ci': there is no pool 'ci' in %s, so nothing says which" % WHERE)
    assert "rebuild it with pool_id=<id>" in lost.message and "pool id %s (2 instances" % A in lost.message
    assert lost.details == {"pool_ids": [A], "pools_of_name": {A: {"instances": 2, "leased": 0}}}
    foreign = refusal(take, one, None, "ci", WHERE, "foreign", "end it")
    assert "%s is not this pool's readable state" % WHERE in foreign.message
    damaged = refusal(take, two, None, "ci", WHERE, "damaged", "end it")
    assert "its pool in %s is damaged" % WHERE in damaged.message and "several pools" in damaged.message
    assert damaged.details["pool_ids"] == [A, B] and set(damaged.details["pools_of_name"]) == {A, B, "none"}


def test_init_builds_on_the_id_asked_for_or_on_a_rebuild_the_stores_or_the_tags():
    named = [inst("i-a1"), inst("i-a2")]
    choose = identity.pool_id_for_init
    assert choose(named, "ci", WHERE, None, None, rebuild=False) is None  # a new pool: a new id is made
    assert choose(named, "ci", WHERE, None, B, rebuild=False) == B
    assert choose(named, "ci", WHERE, B, None, rebuild=True) == B  # the store's id wins
    assert choose(named, "ci", WHERE, None, None, rebuild=True, corrupt_kind="damaged") == A
    assert "rebuild it with pool_id=<id>" in refusal(choose, named, "ci", WHERE, None, None, rebuild=True).message
    assert identity.known_to_ec2(named, "ci", A)
    assert not identity.known_to_ec2(named, "ci", B) and not identity.known_to_ec2(named, "ci", None)
    assert not identity.known_to_ec2(named, "cd", A)


def test_a_name_another_pool_uses_is_refused_naming_that_pool():
    others = {B: {"instances": 2, "templates": []}, None: {"instances": 1, "templates": []}}
    error = identity.collision_error("ci", "eu-west-1", others)
    assert isinstance(error, InvalidRequest) and error.message == identity.collision_message("ci", "eu-west-1", others)
    assert error.details == {"other_pools": {B: others[B], "none": others[None]}}


def test_terminate_ends_the_stores_pool_id_or_says_what_it_left_alone():
    named = [inst("i-a1"), inst("i-old", pool_id=None), inst("i-old-gone", pool_id=None, state="terminated"),
             inst("i-listed", pool_id=None)]
    end = identity.pool_id_to_end
    assert end(dict(state_of("i-a1"), pool_id=A), named, "ci", WHERE, None) == (A, [])
    assert "does not match" in refusal(end, dict(state_of(), pool_id=A), named, "ci", WHERE, B).message
    # A pool made before pool ids: what it lists, and the id asked for; others of its name without an id are named.
    pool_id, warnings = end(state_of("i-listed"), named, "ci", WHERE, None)
    assert pool_id is None and len(warnings) == 1 and warnings[0].endswith("another controller's: i-old")
    assert end(state_of("i-listed", "i-old"), named, "ci", WHERE, A) == (A, [])
    # No state: the id asked for; a damaged one, the only id of the name, said in a warning.
    assert end(None, named, "ci", WHERE, A) == (A, [])
    pool_id, warnings = end(None, named, "ci", WHERE, None, corrupt_kind="damaged")
    assert pool_id == A and warnings == ["pool 'ci' has a damaged state that cannot say its pool id; ended the "
                                         "instances of pool id %s, the only pool of this name in EC2" % A]
    assert "end it with pool_id=<id>" in refusal(end, None, named, "ci", WHERE, None).message
    assert end(None, [inst("i-old", pool_id=None)], "ci", WHERE, None) == (None, [])


def test_a_states_listed_ids_are_its_entries_then_its_leases():
    assert identity.listed_ids(state_of("i-1", "i-2", leases=["i-3"])) == ["i-1", "i-2", "i-3"]
    assert identity.listed_ids(None) == []


def test_the_other_pools_are_described_in_order_with_their_counts_and_templates():
    """describe_others and collision_message, the text init fails with (mutation run: the order of a pool
    without an id, the plural rule, the separators and the default region's name lived)."""
    digits = "0123456789abcdef"  # sorts before any pool-id-less name's key but "": a pool without id comes first
    found = {digits: {"instances": 2, "templates": ["lt-z", "lt-a"]}, None: {"instances": 1, "templates": []}}
    described = ("a pool made before pool ids (no ec2spot:pool-id tag) (1 instance); "
                 "pool id 0123456789abcdef (2 instances, launch template lt-a, lt-z)")
    assert identity.describe_others(found) == described
    message = identity.collision_message("ci", None, found)
    assert message.startswith("pool name 'ci' is already used in region (default) by another pool: %s. Two pools "
                              "of one name would end each other's instances. Either use that pool" % described)
