"""The vCPU quota of each instance type, and whether more instances surely do not fit: plain values only."""

from __future__ import annotations

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.quotas import fit
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.quotas import quota_for
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.quotas import unknown

# Codes as the Service Quotas guide's "Amazon EC2 instance type quotas" table lists them.
STANDARD_OD, STANDARD_SPOT = "L-1216C47A", "L-34B43A08"


@pytest.mark.parametrize("instance_type, on_demand, spot", [
    ("m7i.large", STANDARD_OD, STANDARD_SPOT),
    ("c7gn.medium", STANDARD_OD, STANDARD_SPOT),
    ("t3.micro", STANDARD_OD, STANDARD_SPOT),
    ("m7i-flex.large", STANDARD_OD, STANDARD_SPOT),
    ("im4gn.large", STANDARD_OD, STANDARD_SPOT),
    ("is4gen.medium", STANDARD_OD, STANDARD_SPOT),
    ("z1d.metal", STANDARD_OD, STANDARD_SPOT),
    ("d3en.xlarge", STANDARD_OD, STANDARD_SPOT),
    ("g5.xlarge", "L-DB2E81BA", "L-3819A6DF"),
    ("gr6.4xlarge", "L-DB2E81BA", "L-3819A6DF"),
    ("vt1.3xlarge", "L-DB2E81BA", "L-3819A6DF"),
    ("p3dn.24xlarge", "L-417A185B", "L-7212CCBC"),
    ("p4d.24xlarge", "L-417A185B", "L-7212CCBC"),
    ("p5.48xlarge", "L-417A185B", "L-C4BD4855"),
    ("p6-b200.48xlarge", "L-417A185B", None),  # P6 Spot: no documented quota
    ("x2idn.16xlarge", "L-7295265B", "L-E3A00192"),
    ("f1.2xlarge", "L-74FC7D96", "L-88CF9481"),
    ("inf2.xlarge", "L-1945791B", "L-B5D1601B"),
    ("dl1.24xlarge", "L-6E869C2A", "L-85EED4F7"),
    ("dl2q.24xlarge", "L-6E869C2A", "L-85EED4F7"),
    ("trn1.2xlarge", "L-2C3B7624", "L-6B0D517C"),
    ("trn1n.32xlarge", "L-2C3B7624", "L-6B0D517C"),
    ("u-6tb1.metal", "L-43DA4232", None),  # High Memory: not sold as Spot
    ("u7i-12tb.224xlarge", "L-43DA4232", None),
    ("hpc7g.16xlarge", "L-F7808C92", None),
    ("mac2.metal", None, None),  # Dedicated Hosts only: no vCPU quota
    ("q9.large", None, None),  # a family nobody knows yet
    ("M7I.LARGE", STANDARD_OD, STANDARD_SPOT),
    ("", None, None),
])
def test_each_family_counts_against_its_own_quota(instance_type, on_demand, spot):
    assert getattr(quota_for(instance_type, False), "code", None) == on_demand
    assert getattr(quota_for(instance_type, True), "code", None) == spot


def test_a_quota_names_itself():
    assert quota_for("g5.xlarge", True).name == "All G and VT Spot Instance Requests"
    assert quota_for("m7i.large", False).name == "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"


CHOICES = [("t3.micro", True), ("t3.micro", False)]


def test_quotas_refuse_only_what_surely_does_not_fit():
    # t3.micro has 2 vCPUs. Spot 4 (2 used) + On-Demand 6 vCPUs leave room for 1 + 3 instances.
    limits = {STANDARD_SPOT: 4.0, STANDARD_OD: 6.0}
    assert fit(4, CHOICES, limits, {"t3.micro": 2}, {STANDARD_SPOT: 2}) == (None, [])
    problem, unknown = fit(5, CHOICES, limits, {"t3.micro": 2}, {STANDARD_SPOT: 2})
    assert unknown == []
    assert problem == (
        "5 more instance(s) do not fit the account's vCPU quotas: 'Running On-Demand Standard (A, C, D, H, I, M, R, "
        "T, Z) instances' (L-1216C47A) 6 vCPUs, 0 in use: room for 3 t3.micro (2 vCPUs); 'All Standard (A, C, D, "
        "H, I, M, R, T, Z) Spot Instance Requests' (L-34B43A08) 4 vCPUs, 2 in use: room for 1 t3.micro (2 vCPUs). "
        "Ask for a quota increase in Service Quotas, or choose a smaller size")


def test_the_smallest_type_of_each_quota_is_assumed_and_quotas_add_up():
    choices = [("m7i.xlarge", True), ("m7i.large", True), ("g5.xlarge", True)]
    vcpus = {"m7i.xlarge": 4, "m7i.large": 2, "g5.xlarge": 4}
    limits = {STANDARD_SPOT: 5.0, "L-3819A6DF": 8.0}
    assert fit(4, choices, limits, vcpus, {}) == (None, [])  # 2 m7i.large + 2 g5.xlarge
    assert "5 more instance(s) do not fit" in fit(5, choices, limits, vcpus, {}).problem
    # Use above the quota (it was lowered) leaves no room, not a negative one.
    assert fit(2, choices, limits, vcpus, {STANDARD_SPOT: 9, "L-3819A6DF": 0}) == (None, [])
    assert fit(3, choices, limits, vcpus, {STANDARD_SPOT: 9, "L-3819A6DF": 0}).problem


def test_what_cannot_be_known_never_blocks():
    vcpus = {"t3.micro": 2, "u-6tb1.metal": 448, "q9.large": 2}
    # A quota that could not be read (said once, with the error when it is given).
    assert fit(50, CHOICES + [("t3.nano", False)], {STANDARD_SPOT: 0.0}, dict(vcpus, **{"t3.nano": 2}), {}) == (None, [
        "'Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances' (L-1216C47A) could not be read"])
    assert unknown(CHOICES, {STANDARD_OD: 0.0}, {STANDARD_SPOT: "AccessDeniedException"}) == [
        "'All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests' (L-34B43A08) could not be read "
        "(AccessDeniedException)"]
    assert unknown(CHOICES, {STANDARD_OD: 0.0, STANDARD_SPOT: 0.0}) == []
    # A family (or a market of it) without a known quota.
    assert fit(50, [("t3.micro", True), ("q9.large", True)], {STANDARD_SPOT: 0.0}, vcpus, {}) == (
        None, ["q9.large Spot: no vCPU quota known for this instance family"])
    assert fit(9, [("u-6tb1.metal", True)], {}, vcpus, {}).unknown == [
        "u-6tb1.metal Spot: no vCPU quota known for this instance family"]
    # A type whose vCPU count EC2 did not give.
    assert fit(9, [("t3.micro", True)], {STANDARD_SPOT: 0.0}, {}, {}).unknown == [
        "t3.micro: its vCPU count is not known"]


def test_nothing_to_launch_fits():
    assert fit(0, CHOICES, {STANDARD_SPOT: 0.0, STANDARD_OD: 0.0}, {"t3.micro": 2}, {}) == (None, [])
