"""Issue 17 item 13, through ad-hoc module runs against moto: a refill job whose writes to the table are refused
(AccessDeniedException on TransactWriteItems, injected by the fault proxy: only the job writes with it, get and info
read) says why where users look: info's `refill`, and the next get's warnings and result."""

from __future__ import annotations

from tests.integration.healing import wait_refill_done
from tests.integration.test_pool_dynamodb import faulty_dynamo_pool  # noqa: F401 pylint: disable=unused-import


def test_a_refill_job_that_may_not_write_the_table_says_why_in_info_and_the_next_get(faulty_dynamo_pool):
    pool, proxy = faulty_dynamo_pool, faulty_dynamo_pool.proxy
    assert pool.init(size=2).rc == 0
    proxy.fail("TransactWriteItems", "AccessDeniedException")
    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and got["refill"]["started"] is True, got
    wait_refill_done(pool, timeout=60)
    assert proxy.count("TransactWriteItems", outcome="injected") >= 1, "the job tried to write, and was refused"

    refill = pool.info()["refill"]
    assert refill["running"] is False, refill
    assert refill["last_error"], "the job's end is reported, though the pool could not record it"
    for words in ("stopped and could not record why", "dynamodb:UpdateItem, PutItem, DeleteItem and "
                  "ConditionCheckItem", "AccessDeniedException", str(pool.refill_log)):
        assert words in refill["last_error"], (words, refill["last_error"])
    assert refill["will_restart"] is False and refill["fix"].startswith("give the credentials"), refill

    rc, again = pool.module("spot_pool_get")
    assert rc == 0, again
    assert any("the pool's refill job failed" in warning and "AccessDeniedException" in warning
               for warning in again["warnings"]), again["warnings"]
    assert "AccessDeniedException" in again["refill"]["last_error"], again["refill"]
    wait_refill_done(pool, timeout=60)
    proxy.clear_rules()
