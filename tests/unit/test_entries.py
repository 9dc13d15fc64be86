"""The one entry model: constructors, readiness, leases and the counts, with plain values."""

from __future__ import annotations

import datetime

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import entries

NOW = datetime.datetime(2026, 11, 22, 10, 0, 0, tzinfo=datetime.timezone.utc)


def described(state="running", public_ip="198.51.100.7", private_ip="10.0.0.7"):
    return {"id": "i-0123456789abcdef0", "state": state, "public_ip": public_ip, "private_ip": private_ip,
            "availability_zone": "us-east-1b", "subnet_id": "subnet-1", "instance_type": "t3.micro",
            "launch_time": NOW - datetime.timedelta(minutes=5), "tags": {}}


def test_a_new_entry_has_every_field_and_is_not_ready():
    entry = entries.new_entry("i-1", entries.FALLBACK, "m5.large", "us-east-1a", "subnet-1", "2026-11-22T10:00:00Z")
    assert sorted(entry) == sorted(entries.ENTRY_FIELDS)
    assert not entries.is_ready(entry)
    assert entries.is_fallback(entry)


def test_an_entry_from_a_running_instance_is_ready_with_its_public_address():
    entry = entries.entry_from_instance(described(), None, NOW)
    assert entries.is_ready(entry)
    assert (entry["ip"], entry["public_ip"], entry["private_ip"]) == ("198.51.100.7", "198.51.100.7", "10.0.0.7")
    assert entry["type"] == entries.SPOT
    assert entry["launched_at"] == "2026-11-22T09:55:00Z"  # EC2's launch time, not now


def test_a_private_only_instance_is_ready_on_its_private_address():
    entry = entries.entry_from_instance(described(public_ip=None), entries.FALLBACK, NOW)
    assert entry["ip"] == "10.0.0.7"
    assert entries.address_of(entry) == "10.0.0.7"
    assert entries.address_of(entry, "private") == "10.0.0.7"


def test_a_pending_instance_is_not_ready_and_launched_now_without_a_launch_time():
    info = dict(described(state="pending"), launch_time=None)
    entry = entries.entry_from_instance(info, None, NOW)
    assert not entries.is_ready(entry)
    assert entry["launched_at"] == "2026-11-22T10:00:00Z"
    entries.fill_in(entry, described())
    assert entries.is_ready(entry)


def test_fill_in_ignores_an_instance_that_does_not_run():
    entry = entries.new_entry("i-1")
    entries.fill_in(entry, described(state="stopping"))
    entries.fill_in(entry, None)
    assert entry["ip"] is None


def test_a_lease_carries_its_token_and_expiry():
    entry = entries.entry_from_instance(described(), None, NOW)
    lease = entries.new_lease(entry, NOW, 3600)
    assert lease["leased_at"] == "2026-11-22T10:00:00Z"
    assert lease["expires_at"] == "2026-11-22T11:00:00Z"
    assert len(lease["lease_id"]) == 32 and lease["lease_id"] != entries.new_lease(entry, NOW, 3600)["lease_id"]
    assert "expires_at" not in entries.new_lease(entry, NOW, 0)
    assert set(lease) == set(entries.ENTRY_FIELDS) | set(entries.LEASE_FIELDS)
    assert "leased_at" not in entry  # the entry itself is left as it was


def test_counts_count_idle_entries_by_type_and_leases_apart():
    ready_spot = entries.entry_from_instance(described(), None, NOW)
    pending_spot = entries.new_entry("i-2")
    fallback = entries.entry_from_instance(dict(described(), id="i-3"), entries.FALLBACK, NOW)
    leased_fallback = entries.new_lease(entries.entry_from_instance(dict(described(), id="i-4"), entries.FALLBACK,
                                                                    NOW), NOW, 0)
    state = {"target_size": 3, "instances": [ready_spot, pending_spot, fallback], "leases": [leased_fallback]}
    assert entries.counts(state) == {"target": 3, "ready": 2, "pending": 1, "leased": 1, "spot": 2, "fallback": 1}
    assert entries.counts(None) == {"target": 0, "ready": 0, "pending": 0, "leased": 0, "spot": 0, "fallback": 0}


def test_readiness_is_read_through_is_ready_only():
    """'Ready' is one rule (is_ready): no other module of the core reads an entry's ip to decide it."""
    from pathlib import Path  # pylint: disable=import-outside-toplevel

    package = Path(entries.__file__).resolve().parent
    readers = sorted(path.name for path in package.glob("*.py")
                     if path.name != "entries.py" and ('.get("ip")' in path.read_text(encoding="utf-8")
                                                       or '["ip"]' in path.read_text(encoding="utf-8")))
    assert readers == []


def test_a_pool_is_whole_when_every_slot_holds_a_ready_instance():
    """is_whole (mutation run: its every mutant lived, no test called it)."""
    assert entries.is_whole({"target": 2, "ready": 2, "pending": 0}) is True
    assert entries.is_whole({"target": 2, "ready": 3, "pending": 0}) is True  # a surplus still is whole
    assert entries.is_whole({"target": 2, "ready": 1, "pending": 0}) is False
    assert entries.is_whole({"target": 2, "ready": 2, "pending": 1}) is False  # a pending one is a slot not whole
    assert entries.is_whole({"target": 1}) is False  # absent counts are 0
    assert entries.is_whole({"ready": 1}) is True
    assert entries.is_whole({}) is True


def test_the_address_asked_for_is_the_public_one_unless_private_is_asked():
    """address_of (mutation run: `== "private"` turned `!=` and the keys renamed lived)."""
    lease = {"ip": "198.51.100.7", "public_ip": "198.51.100.7", "private_ip": "10.0.0.7"}
    assert entries.address_of(lease) == "198.51.100.7"
    assert entries.address_of(lease, "public") == "198.51.100.7"
    assert entries.address_of(lease, "private") == "10.0.0.7"
    private_only = {"ip": "10.0.0.8", "public_ip": None, "private_ip": "10.0.0.8"}
    assert entries.address_of(private_only) == "10.0.0.8"


def test_an_entry_from_an_instance_keeps_its_id_type_zone_and_subnet():
    """entry_from_instance (mutation run: dropping the id, type, zone or subnet lived)."""
    pending = entries.entry_from_instance(described(state="pending"))
    assert (pending["id"], pending["instance_type"], pending["availability_zone"], pending["subnet_id"]) == \
        ("i-0123456789abcdef0", "t3.micro", "us-east-1b", "subnet-1")
    assert pending["launched_at"] == "2026-11-22T09:55:00Z"


def test_fill_in_takes_the_zone_ec2_reports():
    """fill_in (mutation run: reading the zone under another key lived)."""
    entry = entries.new_entry("i-0123456789abcdef0", availability_zone="us-east-1a")
    assert entries.fill_in(entry, described())["availability_zone"] == "us-east-1b"


def test_an_entry_without_a_launch_time_or_now_has_no_launched_at():
    """entry_from_instance (mutation run: formatting a missing time lived)."""
    info = dict(described(state="pending"), launch_time=None)
    assert entries.entry_from_instance(info)["launched_at"] is None
