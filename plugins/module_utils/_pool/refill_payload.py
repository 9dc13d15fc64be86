# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The code the detached refill job runs, named so that Ansible ships it with every module that starts the job.

Ansible builds a module's payload from the import statements it reads in the module and, in turn, in each
module_utils file those name (ansible.executor.module_common.recursive_finder); it reads them, it never runs them.
The refill job runs as `python -m <jobcontrol.REFILL_MODULE>` from a copy of the payload of the module that started
it (jobcontrol.start_refill), so the job's code (refill.py and all it imports: launcher, ec2, connection, ...) must
be in that payload. Yet spot_pool_get must not import it: it pulls in botocore, which the hand-out path never loads.

So the import below is read by Ansible and never executed. It is not an unused import to clean up: without it,
get's payload would hold the job's code only by chance (today through init_pool's imports in operations.py), and
once that went, every job started by get would die with "No module named ...refill" in the refill log and the pool
would never be refilled. spot_pool_get and spot_pool_init import this module on purpose for that reason alone;
tests/unit/test_payload.py runs Ansible's finder on them and on this module, and checks the job's code is there.
"""

from __future__ import annotations

import typing

if typing.TYPE_CHECKING:  # never true at run time: for Ansible's payload builder only (see above)
    from . import refill  # noqa: F401  pylint: disable=unused-import
