# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Starting, finding and stopping the detached refill job (its code is in refill.py).

Kept apart from refill.py so that `spot_pool_get` can start the job without importing boto3 or the launcher:
this module needs only the standard library and the pool store, which says where the job's lock, log and code copy
live (stores/). Neither imports the other: the job takes its lock and log from the store too. What makes Ansible
ship the job's code with the modules that start the job is refill_payload.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile

from ._aws import retry
from .domain.errors import PoolError
from .domain.errors import StateFileError
from .stores.localfiles import check_code_directory
from .stores.localfiles import open_private
from .stores.localfiles import same_file

# The job's entry module, run with `python -m` (its code is in the payload through refill_payload.py).
REFILL_MODULE = __name__.rsplit(".", 1)[0] + ".refill"


COPY_PREFIX = "ec2spot-pool-"
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def _code_root():
    """The sys.path entry this collection was imported from: a directory, or Ansible's payload zip."""
    here = os.path.abspath(__file__)
    marker = os.sep + os.path.join("ansible_collections", "ec2spot", "pool") + os.sep
    return here[:here.index(marker)]


def _private_code_dir(code_dir):
    """<state dir>/code, made 0700 whatever the umask; refused when it is not ours alone (it may have been made
    by someone else when the state directory was shared: a copy there could be swapped and run as us)."""
    try:
        os.mkdir(code_dir, 0o700)
    except FileExistsError:
        pass
    else:
        fd = os.open(code_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    check_code_directory(code_dir)


def _open_verified_copy(path, digest):
    """An open descriptor of the copy at `path`, holding a shared flock, if it is what we wrote: our own regular
    file (not a link), mode 0600, whose bytes hash to `digest` (recorded in its name). None otherwise.

    The shared flock marks the copy as in use: the refill job inherits the descriptor and holds it as long as it
    runs, and nothing removes a copy it cannot lock exclusively (see remove_pool_files)."""
    fd = _open_own_file(path) if _DIGEST_RE.match(digest) else None
    if fd is None:
        return None
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            return _closed(fd)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not same_file(fd, path):  # removed by a terminate while we waited
            return _closed(fd)
        content = hashlib.sha256()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            content.update(chunk)
        return fd if content.hexdigest() == digest else _closed(fd)
    except BaseException:
        os.close(fd)
        raise


def _open_own_file(path):
    """A read-only descriptor of our own regular file at `path` (never through a link), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    info = os.fstat(fd)
    return fd if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() else _closed(fd)


def _closed(fd):
    os.close(fd)
    return None


def _discard(path):
    """Remove a copy that failed the check (never run it). The directory is ours alone: so is the name."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise StateFileError("%s is in the way of the refill job's code copy; remove it" % path, path=path)
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_copy(root, infos, code_dir, prefix):
    """Copy the payload's members into a new zip named by the sha256 of its bytes. Returns (path, fd) with a
    shared flock held on fd, or (None, None) if another run's copy took the name meanwhile."""
    with zipfile.ZipFile(root) as payload:
        members = [(info, payload.read(info.filename)) for info in infos]
    tmp = os.path.join(code_dir, ".%s%d.tmp" % (prefix, os.getpid()))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of an earlier run with our pid
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(os.dup(fd), "w+b") as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as copy:
                for info, data in members:
                    copy.writestr(info, data)
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)
            content = hashlib.sha256()
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                content.update(chunk)
        target = os.path.join(code_dir, "%s%s.zip" % (prefix, content.hexdigest()))
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.rename(tmp, target)
        if same_file(fd, target):
            return target, fd
        os.close(fd)
        return None, None
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _stable_code_root(code_dir, root=None):
    """A copy of the code that outlives the module: Ansible deletes its payload directory on exit.

    Returns (sys.path entry, fd): fd is None when the code is a directory (not Ansible's payload); otherwise it is
    the verified copy, open with a shared flock, for the job to inherit.

    The copy leaves out the payload's sitecustomize.py, which points at that temporary directory; what is left
    is the same for every run of the same collection version. Its name is `ec2spot-pool-<key>-<sha256>.zip`: the
    key (from the payload's zip directory) finds it, the sha256 of its own bytes proves it is what we wrote. A copy
    that fails the check is replaced, never run."""
    root = root or _code_root()
    if not zipfile.is_zipfile(root):
        return root, None
    # Keyed by the zip's directory (each member's name, CRC-32 and size), read without decompressing anything:
    # hashing the payload's members on every get that starts the job would cost ~9 ms.
    with zipfile.ZipFile(root) as payload:
        infos = [info for info in payload.infolist() if info.filename != "sitecustomize.py"]
    key = hashlib.sha256()
    for info in infos:
        key.update(b"%s\0%d\0%d\0" % (info.filename.encode(), info.CRC, info.file_size))
    prefix = "%s%s-" % (COPY_PREFIX, key.hexdigest()[:16])
    _private_code_dir(code_dir)
    for _attempt in range(3):
        for name in sorted(os.listdir(code_dir)):
            if name.startswith(prefix) and name.endswith(".zip"):
                path = os.path.join(code_dir, name)
                fd = _open_verified_copy(path, name[len(prefix):-len(".zip")])
                if fd is not None:
                    return path, fd
                _discard(path)
        path, fd = _write_copy(root, infos, code_dir, prefix)
        if fd is not None:
            _prune_code_copies(code_dir, keep=path)
            return path, fd
    raise StateFileError("could not make a verified copy of the refill job's code in %s" % code_dir, path=code_dir)


def _remove_if_unused(path):
    """Remove our own file at `path` unless a refill job runs from it (holds a shared flock on it)."""
    fd = _open_own_file(path)
    if fd is None:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # in use
        if same_file(fd, path):
            os.unlink(path)  # while locked: a get that opened it meanwhile sees it is gone and makes a new one
            return True
        return False
    finally:
        os.close(fd)


def _prune_code_copies(code_dir, keep, min_age=3600):
    """Old copies (another collection version) go once no refill job runs from them, and an hour has passed (so
    two collection versions used in turn do not copy their code on every get)."""
    now = time.time()
    for name in os.listdir(code_dir):
        path = os.path.join(code_dir, name)
        try:
            old = now - os.lstat(path).st_mtime > min_age
        except OSError:
            continue
        if path != keep and old and (name.startswith(COPY_PREFIX) or name.startswith("." + COPY_PREFIX)):
            _remove_if_unused(path)


def remove_unused_code(store):
    """What a terminated pool (store.delete() done) leaves: the code copy, removed when no other pool may still use
    it (store.code_directory_shared()) and no refill job runs from it."""
    code_dir = store.code_directory()
    if code_dir is None or store.code_directory_shared():
        return  # another pool lives here: its next get would copy the code again; keep it for that pool
    try:
        check_code_directory(code_dir)
    except (OSError, StateFileError):
        return  # none, or not ours to clean (a get would refuse it, naming the fix)
    for name in os.listdir(code_dir):
        _remove_if_unused(os.path.join(code_dir, name))
    with contextlib.suppress(OSError):
        os.rmdir(code_dir)  # only if empty: a running job's copy stays


def start_refill(store, env, lock=None):
    """Start the detached job unless one runs (`lock`: the store's refill lock, to look at again after).
    Returns (started, pid)."""
    if (lock or store.refill_lock()).is_held_elsewhere():
        return False, None
    code_dir = store.code_directory()
    if code_dir is None:
        return False, None
    code_root, code_fd = _stable_code_root(code_dir)
    log = store.refill_log_path()
    try:
        env = dict(env)
        env["PYTHONPATH"] = code_root
        env.pop("PYTHONSTARTUP", None)
        # Never through a link, never someone else's file: in a shared place that would let another user choose
        # what we append to.
        try:
            log_fd = open_private(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        except OSError as exc:
            raise StateFileError("cannot open the refill log %s: %s" % (log, exc.strerror), path=log)
        # Background work at a lower CPU priority: the job starts (Python, boto3) while the playbook that started
        # it is still finishing on the same cores, and the playbook must not wait on it.
        nice = shutil.which("nice")
        try:
            # Detached on purpose; never waited for. The job inherits code_fd, whose shared flock marks its code
            # copy as in use for as long as it runs.
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                ([nice, "-n", "10"] if nice else [])
                + [sys.executable, "-m", REFILL_MODULE] + store.spec.job_arguments(),
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, cwd="/", env=env,
                close_fds=True, pass_fds=() if code_fd is None else (code_fd,), start_new_session=True,
            )
        finally:
            os.close(log_fd)
    finally:
        if code_fd is not None:
            os.close(code_fd)
    return True, proc.pid


def _is_refill_process(pid, store):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    return REFILL_MODULE.encode() in argv and all(arg.encode() in argv for arg in store.spec.job_arguments())


def stop_refill(store, timeout=20.0, create=True):
    """Stop a running refill job and return the job lock, held, so that nothing launches until released.

    A job on this controller is sent SIGTERM (SIGKILL after `timeout`). A shared store's job may run on another
    controller, where no signal of ours reaches: its lock (the DynamoDB lease) takes a stop request, which the job
    sees when it renews the lease (every few seconds) and answers by stopping as on SIGTERM; we wait for the lease
    to be released (or to expire), up to `timeout` + 5 s, as for a local job. A holder that does not answer in that
    time (its controller is gone, and its lease lasts minutes) is never overridden: a job that died mid-launch may
    have a CreateFleet in flight whose instances would appear after our sweep. That is a PoolError saying when the
    lease expires; nothing was changed.

    Without `create` (a pool that has no file), nothing is created: when no job ever ran here, the lock returned
    is not held (its release() does nothing)."""
    lock = store.refill_lock()
    if lock.acquire(blocking=False, create=create):
        return lock
    if not create and not lock.exists():
        return lock
    state = store.read()
    pid = (state or {}).get("refill", {}).get("pid")
    if pid and _is_refill_process(pid, store):
        os.kill(pid, signal.SIGTERM)

    def take(seconds):
        return lock.acquire_stopping(seconds, create=create)
    if take(timeout):
        return lock
    if pid and _is_refill_process(pid, store):
        os.kill(pid, signal.SIGKILL)
    if take(5.0):
        return lock
    report = lock.stop_report()
    if report:
        raise PoolError(_unanswered(store, report), holder=report["holder"],
                        lease_expires=_utc(report["until"]), stop_answered=report["answered"])
    holder = lock.holder_elsewhere()
    if holder:
        # A shared store's lease: the job may run on another controller, where no signal of ours reaches it.
        raise PoolError("the refill job of pool '%s' did not stop: the refill lease in %s is held by %s; that job "
                        "stops once the pool is whole (or, if its controller is gone, the lease expires by itself): "
                        "try again then" % (store.pool_name, store.location, holder), holder=holder)
    raise PoolError("the refill job of pool '%s' (pid %s) did not stop; stop it and try again" % (store.pool_name, pid))


def _utc(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _unanswered(store, report):
    """The message of a stop request the lease's holder on another controller did not answer by stopping."""
    head = ("the refill job of pool '%s' did not stop: the refill lease in %s is held by %s until %s (epoch %d), "
            "asked to stop at %s; nothing was changed. "
            % (store.pool_name, store.location, report["holder"], _utc(report["until"]), report["until"],
               _utc(report["asked_at"])))
    if report["answered"]:
        return head + ("The holder has renewed its lease since (it runs: a refill job stops at the end of its current "
                       "pass, a spot_pool_init or spot_pool_reconcile when it is done): try again in a minute")
    return head + ("The holder has not renewed its lease since (a running refill job renews it every few seconds: "
                   "its controller is probably gone, or it is stuck in an AWS call). It is not overridden, as a "
                   "launch of it may still be in flight: try again once the lease expires by itself, at %s"
                   % _utc(report["until"]))


_CREDENTIALS_FIX = ("give the credentials the pool runs with (the modules' connection options, passed to the job "
                    "in its environment) what the error names, or renew them")
_INIT_FIX = "run ec2spot.pool.spot_pool_init with the pool's options (it re-creates the launch template the pool owns)"
# Error code of a job that stopped for good -> what the user has to do before it can succeed.
_FIXES = (
    (retry.EC2_DENIED_CODES | retry.DYNAMODB_DENIED_CODES | retry.NO_CREDENTIALS_CODES | retry.ACCOUNT_BLOCKED_CODES,
     _CREDENTIALS_FIX),
    (retry.OPT_IN_CODES | retry.PENDING_VERIFICATION_CODES, "finish the account's set-up for EC2 in this region"),
    (("InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException",
      "InvalidLaunchTemplateId.VersionNotFound"), _INIT_FIX),
    (("NoRegion", "NoRegionError"), "set the region option when you run ec2spot.pool.spot_pool_init"),
    (("StateFileError", "DamagedPool"), "repair the pool file (or the items the error names), or run "
     "ec2spot.pool.spot_pool_init with rebuild: true"),
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


def exit_note(last_exit):
    """What info and get say about a refill job whose own record in the pool cannot say why it ended (pure):
    `last_exit` as the lease's last_exit() returns it (None: nothing to say). The job's log is named with the host
    it is on: a shared store's job may have run on another controller."""
    if not last_exit:
        return None
    host, _sep, pid = last_exit["by"].rpartition(":")
    where = "its log %s on %s" % (last_exit.get("log") or "(unknown)", host)
    if last_exit["released"]:
        return ("the refill job (pid %s on %s) stopped and could not record why in the pool: %s; see %s"
                % (pid, host, last_exit["error"], where))
    return ("the refill job (pid %s on %s) ended without recording why (killed, or its controller went down: it "
            "stopped renewing the refill lease); see %s" % (pid, host, where))


def lease_exit_note(lock, cached=False):
    """exit_note() of the refill lease `lock` (of a store whose lease records how runs end), or None. With
    `cached`, from what the lock read last (start_refill's look), without another request."""
    return exit_note(lock.last_exit(cached=cached))


def refill_status(store, state):
    """The refill job as info reports it: whether it runs, its last error, whether it recovers by itself
    (`will_restart`: the next get or init starts it and nothing stands in its way) and, when not, the `fix`.

    A job that could not write its end to the pool (no permission, killed) is reported from what its lease says
    (lease_exit_note), or, without that, from the pid it left in the pool: either way the error says it ended and
    names its log."""
    refill = dict((state or {}).get("refill") or {})
    lock = store.refill_lock()
    refill["log"] = store.refill_log_path()
    last_exit = lock.last_exit()
    refill["running"] = last_exit is None and lock.is_held_elsewhere()
    if last_exit and last_exit["error"]:
        refill.update(last_error=exit_note(last_exit), last_error_code=last_exit["error_code"],
                      last_error_permanent=True, pid=None)
    elif not refill["running"] and (refill.get("pid") or last_exit):
        # Killed (SIGKILL, a reboot) before it could write anything: its pid means nothing now.
        refill["last_error"] = refill.get("last_error") or exit_note(last_exit) or (
            "the refill job (pid %s) ended without recording why; see %s" % (refill["pid"], refill["log"]))
        refill["pid"] = None
    permanent = bool(refill.get("last_error")) and bool(refill.get("last_error_permanent"))
    refill["will_restart"] = not permanent
    refill["fix"] = refill_fix(refill.get("last_error_code"), refill["log"]) if permanent else None
    return refill
