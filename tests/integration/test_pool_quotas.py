"""spot_pool_init's check of the account's vCPU quotas, through ansible-playbook.

moto's Service Quotas knows no EC2 quota (NoSuchResourceException): there the check cannot be made and the pool is
launched with a warning. Where a quota must be readable, the fault proxy answers GetServiceQuota for it."""

from __future__ import annotations

from tests.integration.conftest import task_result
from tests.support.moto import AMI

STANDARD_SPOT, STANDARD_ON_DEMAND = "L-34B43A08", "L-1216C47A"


def _unrelated(pool, count, spot=False):
    """`count` running t3.micro instances that belong to no pool (the account's other work)."""
    market = {"InstanceMarketOptions": {"MarketType": "spot"}} if spot else {}
    pool.ec2.run_instances(ImageId=AMI, MinCount=count, MaxCount=count, InstanceType="t3.micro", **market)


def test_unrelated_instances_do_not_stop_a_small_pool_when_no_quota_can_be_read(faulty_pool):
    # The account attribute max-instances (20 in moto) no longer counts: 20 other instances leave a pool of 2 alone.
    pool = faulty_pool
    _unrelated(pool, 20)

    run = pool.init(size=2)
    assert run.rc == 0, run.stdout[-3000:]
    init = task_result(run, "spot_pool_init")
    assert init["counts"]["ready"] == 2, init
    assert any("could not be read" in warning and STANDARD_SPOT in warning and "launching without checking" in warning
               for warning in init.get("warnings", [])), init
    assert pool.proxy.count("DescribeAccountAttributes") == 0
    assert pool.proxy.count("GetServiceQuota") >= 1


def test_a_readable_quota_too_small_is_refused_naming_the_quota_and_nothing_is_launched(faulty_pool):
    pool = faulty_pool
    pool.proxy.set_service_quota(STANDARD_SPOT, 4, "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests")
    pool.proxy.set_service_quota(STANDARD_ON_DEMAND, 4,
                                 "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances")
    _unrelated(pool, 1, spot=True)  # 2 of the 4 Spot vCPUs: room for 1 Spot and 2 On-Demand t3.micro
    before = pool.ec2.describe_instances()["Reservations"]

    run = pool.init(size=4)
    assert run.rc != 0, run.stdout[-3000:]
    msg = task_result(run, "spot_pool_init")["msg"]
    assert "4 more instance(s) do not fit the account's vCPU quotas" in msg, msg
    for words in ("'All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests' (L-34B43A08) 4 vCPUs, 2 in use",
                  "(L-1216C47A) 4 vCPUs, 0 in use", "Ask for a quota increase in Service Quotas"):
        assert words in msg, msg
    assert pool.state() is None
    assert pool.ec2.describe_instances()["Reservations"] == before
    assert pool.proxy.count(["CreateFleet", "RunInstances", "CreateLaunchTemplate"]) == 0

    run = pool.init(size=3)  # what fits is launched
    assert run.rc == 0, run.stdout[-3000:]
    assert task_result(run, "spot_pool_init")["counts"]["ready"] == 3
