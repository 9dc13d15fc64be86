# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The little every module's main() shares: which store, and how a PoolError becomes a failed result."""

from __future__ import annotations

from .connection import BOTOCORE_CONFIG
from .state import FileStore
from .state import pool_file_path


def pool_store(params):
    name = params.get("pool_name")  # validated by pool_file_path; an empty name is an error, not `default`
    return FileStore(pool_file_path(name, params.get("state_dir"), params.get("pool_file")), name)


def fail(module, error):
    """Fail the module with the error's message and details; AWS errors keep amazon.aws's error shape."""
    exception = getattr(error, "exception", None)
    if exception is not None and hasattr(module, "fail_json_aws"):
        module.fail_json_aws(exception, msg=error.message, **error.details)
    module.fail_json(msg=error.message, **error.details)


def ec2_client(module):
    """The EC2 client of an AnsibleAWSModule, with the collection's single retry layer (see BOTOCORE_CONFIG)."""
    return module.client("ec2", config=BOTOCORE_CONFIG)
