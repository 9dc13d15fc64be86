"""Which files Ansible puts into a module's payload, found by ansible-core's own finder.

`payload_files(source)` runs `ansible.executor.module_common.recursive_finder` (what `modify_module` and
`_find_module_utils` call to build the AnsiballZ zip) on a module's source, in a fresh interpreter with Ansible's
collection loader installed as `ansible` installs it: the test process imports the collection as a plain package,
and the finder needs the loader to read module_utils files without running them.
"""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "build" / "collections"
PACKAGE = "ansible_collections.ec2spot.pool"


def payload_files(source: str, fqn: str = PACKAGE + ".plugins.modules.payload_probe") -> set[str]:
    """The paths inside the payload of a module whose code is `source` (module_utils and packages only)."""
    proc = subprocess.run([sys.executable, "-m", __name__, str(COLLECTIONS), fqn], input=source, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise AssertionError("Ansible's module dependency finder failed:\n%s" % proc.stderr)
    return set(json.loads(proc.stdout))


def module_utils_file(module: str) -> str:
    """The path inside a payload of this collection's module_utils module `module` (e.g. `_pool.refill`)."""
    return "ansible_collections/ec2spot/pool/plugins/module_utils/%s.py" % module.replace(".", "/")


def _main(collections_path: str, fqn: str) -> None:
    # pylint: disable=import-outside-toplevel
    from ansible._internal._ansiballz._builder import ExtensionManager
    from ansible.executor.module_common import recursive_finder
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    _AnsibleCollectionFinder(paths=[collections_path])._install()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as payload:
        recursive_finder(fqn.rsplit(".", 1)[-1], fqn, sys.stdin.read().encode(), payload,
                         datetime.datetime(2000, 1, 1), ExtensionManager())
        json.dump(sorted(payload.namelist()), sys.stdout)


if __name__ == "__main__":
    _main(*sys.argv[1:3])
