# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool state file: one JSON document per pool, guarded by flock on a sidecar lock file.

Why a sidecar: writes replace the JSON file (temp file + fsync + os.replace), so a lock taken on the JSON
file itself would be held on an inode that is no longer the file; the `.lock` file is never replaced.
Readers and writers hold the lock only around local file I/O, never around an AWS call or a spawn.

This module imports nothing heavy: it sits on the hand-out path of `spot_pool_get`.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import tempfile
import time

from .errors import InvalidRequest
from .errors import StateFileError

STATE_VERSION = 1
# Matched with fullmatch(): `$` would also accept a name followed by a newline ("ci\n" is not pool "ci").
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TIME_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def isoformat(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    """The inverse of isoformat(). Not strptime: its first call imports _strptime and calendar (3-8 ms measured),
    which every default `spot_pool_get` would pay when it reads the pool's verified_at."""
    if not text:
        return None
    if not TIME_RE.match(text):
        raise ValueError("time data %r does not match format '%%Y-%%m-%%dT%%H:%%M:%%SZ'" % (text,))
    return datetime.datetime.fromisoformat(text[:-1]).replace(tzinfo=datetime.timezone.utc)


def default_state_dir(environ=None):
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ec2spot")


def pool_file_path(pool_name, state_dir=None, pool_file=None):
    if not pool_name:
        # Never a fallback to the pool `default`: an unset variable (`pool_name: "{{ name }}"`, `-e name=`) must not
        # select, and end, another pool.
        raise InvalidRequest("pool_name is empty: name the pool explicitly (for the default pool, pool_name: default)")
    if not POOL_NAME_RE.fullmatch(pool_name):
        raise InvalidRequest(
            "pool_name %r is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            % (pool_name,)
        )
    if pool_file:
        return os.path.abspath(os.path.expanduser(pool_file))
    return os.path.join(os.path.abspath(os.path.expanduser(state_dir or default_state_dir())), pool_name + ".json")


def new_state(pool_name, target_size, launch):
    return {
        "version": STATE_VERSION,
        "pool_name": pool_name,
        "target_size": target_size,
        "launch": launch,
        "instances": [],
        "leases": [],
        "cooldowns": [],
        "pending_launches": [],
        "refill": {"pid": None, "started_at": None, "finished_at": None, "verified_at": None, "last_error": None},
    }


def counts(state):
    """Counts users see in every result: how many are ready to hand out, still coming, or leased."""
    if not state:
        return {"target": 0, "ready": 0, "pending": 0, "leased": 0, "spot": 0, "fallback": 0}
    instances = state["instances"]
    return {
        "target": state["target_size"],
        "ready": sum(1 for entry in instances if entry.get("ip")),
        "pending": sum(1 for entry in instances if not entry.get("ip")),
        "leased": len(state["leases"]),
        "spot": sum(1 for entry in instances if entry.get("type") == "spot"),
        "fallback": sum(1 for entry in instances if entry.get("type") == "fallback"),
    }


def open_private(path, flags):
    """Open a file of ours: created 0600, never through a symlink, refused if another user owns it."""
    # O_NOFOLLOW: a symlink planted where the state lives (e.g. in /tmp) must not redirect our writes.
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if os.fstat(fd).st_uid != os.getuid():
        os.close(fd)
        raise StateFileError("%s belongs to another user; refusing to use it" % path)
    return fd


class FileLock:
    """flock on a file that is never replaced. Closing the descriptor (or the process dying) releases it."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def acquire(self, blocking=True, timeout=None):
        """Take the lock; False if `blocking` is off (or `timeout` runs out) and someone else holds it."""
        try:
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise StateFileError("cannot open lock file %s: %s" % (self.path, exc.strerror))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking and deadline is None else fcntl.LOCK_NB))
                self.fd = fd
                return True
            except BlockingIOError:
                if not blocking or time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def is_held_elsewhere(self):
        """True while another open file description holds the lock (e.g. a running refill job)."""
        if self.fd is not None:
            return False
        if not os.path.exists(self.path):
            return False
        if self.acquire(blocking=False):
            self.release()
            return False
        return True


class Transaction:
    """What a caller of PoolStore.transaction() sees: the state (None when there is no pool) to change."""

    def __init__(self, state):
        self.state = state
        self.deleted = False

    def delete(self):
        self.state = None
        self.deleted = True


class PoolStore:
    """One pool's state file. Every method that reads or writes takes the sidecar lock itself."""

    def __init__(self, path, pool_name):
        self.path = path
        self.pool_name = pool_name
        self.directory = os.path.dirname(path)
        self.lock_path = path + ".lock"

    # -- files -------------------------------------------------------------------------------------
    def ensure_directory(self):
        """Create the state directory private to its owner (0700); refuse one that others may write to."""
        try:
            os.makedirs(self.directory, mode=0o700)
        except FileExistsError:
            pass
        info = os.stat(self.directory)
        writable_by_others = info.st_mode & 0o022
        sticky = info.st_mode & 0o1000
        if info.st_uid != os.getuid() and not sticky:
            raise StateFileError("state directory %s belongs to another user; choose another state_dir" % self.directory)
        if writable_by_others and not sticky:
            raise StateFileError(
                "state directory %s can be written by other users; run 'chmod 700 %s' or choose another state_dir"
                % (self.directory, self.directory)
            )

    @contextlib.contextmanager
    def locked(self):
        self.ensure_directory()
        lock = FileLock(self.lock_path)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _read_text(self):
        try:
            fd = open_private(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateFileError("%s is a symbolic link; refusing to follow it" % self.path)
            raise StateFileError("cannot read %s: %s" % (self.path, exc.strerror))
        with os.fdopen(fd, "r", encoding="utf-8") as handle:
            return handle.read()

    def _parse(self, text):
        recovery = (
            "The file is left as it is. Inspect it, or move it aside and run ec2spot.pool.spot_pool_init again; "
            "every pool instance carries the tag ec2spot:pool=%s, so ec2spot.pool.spot_pool_terminate still finds them."
            % self.pool_name
        )
        try:
            state = json.loads(text)
        except ValueError as exc:
            raise StateFileError("pool file %s is not valid JSON (%s). %s" % (self.path, exc, recovery), path=self.path)
        problems = []
        if not isinstance(state, dict):
            problems.append("it is not a JSON object")
        else:
            if state.get("version") != STATE_VERSION:
                problems.append("its version is %r, expected %d" % (state.get("version"), STATE_VERSION))
            if state.get("pool_name") != self.pool_name:
                problems.append("it belongs to pool %r, not %r" % (state.get("pool_name"), self.pool_name))
            for key in ("instances", "leases"):
                if not isinstance(state.get(key), list) or not all(
                    isinstance(entry, dict) and isinstance(entry.get("id"), str) for entry in state.get(key)
                ):
                    problems.append("'%s' is not a list of entries with an 'id'" % key)
            if not isinstance(state.get("target_size"), int) or state.get("target_size") < 0:
                problems.append("'target_size' is not a non-negative integer")
            if not isinstance(state.get("launch"), dict):
                problems.append("'launch' is missing")
        if problems:
            raise StateFileError(
                "pool file %s is not a pool file this collection can use: %s. %s"
                % (self.path, "; ".join(problems), recovery),
                path=self.path,
            )
        state.setdefault("refill", {})
        state.setdefault("cooldowns", [])
        state.setdefault("pending_launches", [])
        return state

    def _write_text(self, text):
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix="." + os.path.basename(self.path) + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _sync_directory(self):
        """Make the last rename durable. Done after the lock is released: other callers need not wait for it,
        and the caller still returns only once its own change is on disk."""
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def serialize(state):
        # Compact: with `indent` the json module falls back to its pure-Python encoder, 5x slower on a pool of a
        # few hundred entries, and this runs under the lock every other caller waits for. Read the pool with
        # ec2spot.pool.spot_pool_info (or `python -m json.tool <file>`).
        return json.dumps(state, separators=(",", ":"), sort_keys=True) + "\n"

    # -- public API --------------------------------------------------------------------------------
    def read(self):
        """The current state, or None when the pool has no file."""
        if not os.path.lexists(self.path):
            # No pool: say so without creating its directory and lock file (a check-mode run must write nothing).
            # Files only appear by os.replace, so this answer is the one a locked read would have given a moment ago.
            if os.path.isdir(self.directory):
                self.ensure_directory()  # creates nothing here; still refuses a directory others can write to
            return None
        with self.locked():
            text = self._read_text()
        return None if text is None else self._parse(text)

    def exists(self):
        return os.path.exists(self.path)

    @contextlib.contextmanager
    def transaction(self):
        """Read, let the caller change `tx.state`, write it back atomically if it changed, all under the lock.

        An exception inside the block writes nothing, so a failed step leaves the file as it was.
        """
        changed = False
        with self.locked():
            text = self._read_text()
            tx = Transaction(None if text is None else self._parse(text))
            yield tx
            if tx.deleted:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                changed = True
            elif tx.state is not None:
                new_text = self.serialize(tx.state)
                if new_text != text:
                    self._write_text(new_text)
                    changed = True
        if changed:
            self._sync_directory()
