# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Starting, finding and stopping the detached refill job (its code is in refill.py).

Kept apart from refill.py so that `spot_pool_get` can start the job without importing boto3 or the launcher:
this module needs only the standard library and the state store.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import typing
import zipfile

from .errors import PoolError
from .state import FileLock

if typing.TYPE_CHECKING:
    # Never executed; it makes Ansible put the job's code (and what it imports) into the module's payload.
    from . import refill  # noqa: F401  pylint: disable=unused-import

REFILL_MODULE = __name__.rsplit(".", 1)[0] + ".refill"


def refill_lock(store):
    """Held by the running refill job for as long as it runs (and by init/terminate while they work)."""
    store.ensure_directory()
    return FileLock(store.path + ".refill.lock")


def log_path(store):
    return store.path + ".refill.log"


def _code_root():
    """The sys.path entry this collection was imported from: a directory, or Ansible's payload zip."""
    here = os.path.abspath(__file__)
    marker = os.sep + os.path.join("ansible_collections", "ec2spot", "pool") + os.sep
    return here[:here.index(marker)]


def _stable_code_root(state_dir):
    """A copy of the code that outlives the module: Ansible deletes its payload directory on exit.

    The copy leaves out the payload's sitecustomize.py, which points at that temporary directory; what is left
    is the same for every run of the same collection version, so its digest names one shared copy."""
    root = _code_root()
    if not zipfile.is_zipfile(root):
        return root
    # Named from the zip's directory (each member's name, CRC-32 and size), read without decompressing anything:
    # hashing the members' content cost ~9 ms on every get that starts the job; this costs ~0.4 ms.
    with zipfile.ZipFile(root) as payload:
        infos = [info for info in payload.infolist() if info.filename != "sitecustomize.py"]
    digest = hashlib.sha256()
    for info in infos:
        digest.update(b"%s\0%d\0%d\0" % (info.filename.encode(), info.CRC, info.file_size))
    code_dir = os.path.join(state_dir, "code")
    os.makedirs(code_dir, mode=0o700, exist_ok=True)
    target = os.path.join(code_dir, "ec2spot-pool-%s.zip" % digest.hexdigest()[:16])
    if os.path.exists(target):
        return target
    with zipfile.ZipFile(root) as payload:
        members = [(info, payload.read(info.filename)) for info in infos]
    tmp = "%s.%d.tmp" % (target, os.getpid())
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as copy:
        for info, data in members:
            copy.writestr(info, data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)
    _prune_code_copies(code_dir, keep=target)
    return target


def _prune_code_copies(code_dir, keep, min_age=3600):
    """Old copies (another collection version) go once no refill job can still be running from them."""
    now = time.time()
    for name in os.listdir(code_dir):
        path = os.path.join(code_dir, name)
        if path != keep and name.startswith("ec2spot-pool-") and now - os.path.getmtime(path) > min_age:
            try:
                os.unlink(path)
            except OSError:
                pass


def start_refill(store, env):
    """Start the detached job unless one runs. Returns (started, pid)."""
    if refill_lock(store).is_held_elsewhere():
        return False, None
    code_root = _stable_code_root(store.directory)
    env = dict(env)
    env["PYTHONPATH"] = code_root
    env.pop("PYTHONSTARTUP", None)
    log_fd = os.open(log_path(store), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    # Background work at a lower CPU priority: the job starts (Python, boto3) while the playbook that started it
    # is still finishing on the same cores, and the playbook must not wait on it.
    nice = shutil.which("nice")
    try:
        # Detached on purpose; never waited for.
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            ([nice, "-n", "10"] if nice else [])
            + [sys.executable, "-m", REFILL_MODULE, "--state-file", store.path, "--pool-name", store.pool_name],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, cwd="/", env=env,
            close_fds=True, start_new_session=True,
        )
    finally:
        os.close(log_fd)
    return True, proc.pid


def _is_refill_process(pid, store):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    return REFILL_MODULE.encode() in argv and store.path.encode() in argv


def stop_refill(store, timeout=20.0):
    """Stop a running refill job and return the job lock, held, so that nothing launches until released."""
    lock = refill_lock(store)
    if lock.acquire(blocking=False):
        return lock
    state = store.read()
    pid = (state or {}).get("refill", {}).get("pid")
    if pid and _is_refill_process(pid, store):
        os.kill(pid, signal.SIGTERM)
    if lock.acquire(timeout=timeout):
        return lock
    if pid and _is_refill_process(pid, store):
        os.kill(pid, signal.SIGKILL)
    if lock.acquire(timeout=5.0):
        return lock
    raise PoolError("the refill job of pool '%s' (pid %s) did not stop; stop it and try again" % (store.pool_name, pid))


_CREDENTIALS_FIX = ("give the credentials the pool runs with (the modules' connection options, passed to the job "
                    "in its environment) what the error names, or renew them")
_INIT_FIX = "run ec2spot.pool.spot_pool_init with the pool's options (it re-creates the launch template the pool owns)"
# Error code of a job that stopped for good -> what the user has to do before it can succeed.
_FIXES = (
    (("AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
      "RequestExpired", "NoCredentials", "NoCredentialsError", "PartialCredentialsError", "Blocked"), _CREDENTIALS_FIX),
    (("OptInRequired", "PendingVerification"), "finish the account's set-up for EC2 in this region"),
    (("InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException",
      "InvalidLaunchTemplateId.VersionNotFound"), _INIT_FIX),
    (("NoRegion", "NoRegionError"), "set the region option when you run ec2spot.pool.spot_pool_init"),
    (("StateFileError",), "repair the pool file, or run ec2spot.pool.spot_pool_init with rebuild: true"),
)


def refill_fix(code, log):
    """What to do about a refill job that stopped on an error it cannot get past by itself (error code `code`)."""
    what = next((fix for codes, fix in _FIXES if code in codes), None)
    if what is None:
        what = ("correct the launch options the error names (image, instance types, subnets, key, profile...) and "
                "run ec2spot.pool.spot_pool_init again" if code and code.startswith("Invalid")
                else "read the refill log %s" % log)
    return ("%s; then run ec2spot.pool.spot_pool_init (or the next ec2spot.pool.spot_pool_get) to start the refill "
            "job again" % what)


def refill_status(store, state):
    """The refill job as info reports it: whether it runs, its last error, whether it recovers by itself
    (`will_restart`: the next get or init starts it and nothing stands in its way) and, when not, the `fix`."""
    refill = dict((state or {}).get("refill") or {})
    refill["running"] = refill_lock(store).is_held_elsewhere()
    refill["log"] = log_path(store)
    if not refill["running"] and refill.get("pid"):
        # Killed (SIGKILL, a reboot) before it could write anything: its pid means nothing now.
        refill["last_error"] = refill.get("last_error") or (
            "the refill job (pid %s) ended without recording why; see %s" % (refill["pid"], refill["log"]))
        refill["pid"] = None
    permanent = bool(refill.get("last_error")) and bool(refill.get("last_error_permanent"))
    refill["will_restart"] = not permanent
    refill["fix"] = refill_fix(refill.get("last_error_code"), refill["log"]) if permanent else None
    return refill
