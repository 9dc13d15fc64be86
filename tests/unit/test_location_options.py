"""An empty option that names where a pool lives is an error, never the option's default
(stores/spec.py check_location_options, which StoreSpec.from_options and so common.pool_store apply)."""

from __future__ import annotations

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.spec import check_location_options


@pytest.mark.parametrize("option", ["pool_name", "state_dir", "pool_file", "dynamodb_table"])
@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_an_empty_or_blank_location_option_is_refused(option, value):
    with pytest.raises(InvalidRequest, match="^%s is empty: " % option):
        check_location_options({option: value})
    with pytest.raises(InvalidRequest, match="^%s is empty: " % option):
        pool_store({"pool_name": "ci", "store": "dynamodb", "dynamodb_table": "t", option: value},
                   make_dynamodb_client=lambda: pytest.fail("no client for refused options"), region="us-east-1")


def test_options_not_given_take_their_defaults():
    check_location_options({"pool_name": "ci", "state_dir": None, "pool_file": None, "dynamodb_table": None})
    check_location_options({})
    store = pool_store({"pool_name": "ci", "store": "dynamodb", "dynamodb_table": None}, object, "us-east-1")
    assert store.table == "ec2spot-pool"
