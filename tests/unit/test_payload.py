"""The refill job's code travels in the payload of every module that starts the job.

The job runs from a copy of the starting module's payload (jobcontrol.start_refill), and Ansible ships only the
module_utils files that import statements name. spot_pool_get never imports the job's code at run time (it would
load botocore on the hand-out path): refill_payload.py names it for Ansible. These tests run Ansible's own finder."""

from __future__ import annotations

import ast
import functools

import pytest

from tests.support.payload import PACKAGE
from tests.support.pool_imports import module_imports
from tests.support.pool_imports import reachable
from tests.support.payload import REPO
from tests.support.payload import module_utils_file
from tests.support.payload import payload_files

JOB_ENTRY = "_pool.refill"
AMAZON_AWS_UTILS = "ansible_collections.amazon.aws.plugins.module_utils."


def _importing(module):
    return "from %s.plugins.module_utils.%s import *  # noqa\n" % (PACKAGE, module)


@pytest.fixture(scope="module")
def job_code():
    """What the job needs: refill.py and every module_utils file it imports, as the finder follows them."""
    files = payload_files(_importing(JOB_ENTRY))
    assert module_utils_file(JOB_ENTRY) in files
    for needed in ("_pool.launcher", "_pool._aws.ec2", "_pool._aws.connection", "_pool.stores.filestore", "_pool.stores.base",
                   "_pool.stores.dynamodb", "_pool.domain.pool"):
        assert module_utils_file(needed) in files, needed
    return files


def test_refill_payload_alone_brings_the_whole_job(job_code):
    assert job_code <= payload_files(_importing("_pool.refill_payload"))


@functools.lru_cache(maxsize=None)
def module_payload(module):
    """The payload of one of this collection's modules (cached: each finder run is a fresh interpreter)."""
    source = (REPO / "plugins" / "modules" / (module + ".py")).read_text()
    return frozenset(payload_files(source, "%s.plugins.modules.%s" % (PACKAGE, module)))


@pytest.mark.parametrize("module", ["spot_pool_get", "spot_pool_init"])
def test_modules_that_start_the_job_ship_its_code_on_purpose(module, job_code):
    files = module_payload(module)
    # Named on purpose, not shipped by chance through some other import that a refactor may move away.
    assert module_utils_file("_pool.refill_payload") in files
    assert job_code <= files, sorted(job_code - files)


def _amazon_aws_imports(path):
    """The amazon.aws module_utils files a file imports, as paths inside a payload."""
    return {node.module.replace(".", "/") + ".py" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(AMAZON_AWS_UTILS)}


@pytest.mark.parametrize("module", ["spot_pool_get", "spot_pool_init", "spot_pool_terminate"])
def test_the_amazon_aws_code_ec2_uses_travels_with_every_module_that_runs_it(module):
    """ec2.py runs in init and terminate, and in the refill job that get and init start from a copy of their
    payload: what it takes from amazon.aws must be in those payloads, or the job dies on its first import."""
    needed = _amazon_aws_imports(REPO / "plugins" / "module_utils" / "_pool" / "_aws" / "ec2.py")
    assert {AMAZON_AWS_UTILS.replace(".", "/") + name for name in ("retries.py", "tagging.py")} <= needed
    files = module_payload(module)
    assert needed <= files, sorted(needed - files)


@pytest.mark.parametrize("module", sorted(path.stem for path in (REPO / "plugins" / "modules").glob("spot_pool_*.py")))
def test_every_module_payload_carries_what_it_imports(module):
    """Ansible's finder follows the subpackages (domain/, stores/, _aws/): every _pool file a module's imports reach,
    at any depth, with each package's __init__.py, is in its payload."""
    needed = reachable(module_imports((REPO / "plugins" / "modules" / (module + ".py")).read_text()))
    assert {"domain", "stores", "_aws"} & needed, needed  # the reader saw the subpackages
    files = module_payload(module)
    missing = sorted(name for name in needed
                     if module_utils_file("_pool." + name) not in files
                     and module_utils_file("_pool.%s.__init__" % name) not in files)
    assert missing == []
