# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The JSON file store (FileStore, the PoolStore of base.py): one JSON document per pool, guarded by flock on a
sidecar lock file. Beside it: the refill job's lock and log, and (in the state directory) its code copy.

Why a sidecar: writes replace the JSON file (temp file + fsync + os.replace), so a lock taken on the JSON
file itself would be held on an inode that is no longer the file; the `.lock` file is never replaced.
Writers hold the lock only around local file I/O, never around an AWS call or a spawn. Readers need no lock:
the file is only ever replaced whole, so a read sees one version or the next.

What is trusted on disk is localfiles.py's rule. A sidecar (lock) is only ever created beside a valid pool file, or
for a pool being created: reading something that is not a pool file leaves no trace.

This module imports nothing heavy: it sits on the hand-out path of `spot_pool_get`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

from ..domain.claim import choose_claim
from ..domain.claim import needs_verify
from ..domain.entries import counts
from ..domain.entries import new_lease
from ..domain.errors import DamagedPool
from ..domain.errors import PoolError
from ..domain.errors import StateFileError
from ..domain.pool import STATE_VERSION
from ..domain.pool import schema_problems
from ..domain.pool import shown_value
from ..domain.timefmt import utcnow
from .base import Claim
from .base import PoolStore
from .base import RefillLease
from .base import Transaction
from .localfiles import CODE_DIR_NAME
from .localfiles import FileLock
from .localfiles import check_code_directory
from .localfiles import check_future_state_directory
from .localfiles import check_state_directory
from .localfiles import make_private_directory
from .localfiles import open_private
from .localfiles import remove_own_file
from .spec import StoreSpec


class _RefillLock(FileLock, RefillLease):
    """The refill lock beside a pool file (a RefillLease that one machine sees: no stop requests, no recorded
    ends): acquiring it with `create` first makes the state directory (private), like any first write of the pool
    would."""

    def __init__(self, path, store):
        super().__init__(path)
        self._store = store

    def acquire(self, blocking=True, timeout=None, create=True):
        if create:
            self._store.ensure_directory()
        return super().acquire(blocking, timeout, create)

    def release(self, exit_error=None, exit_code=None):  # pylint: disable=unused-argument
        """Give the flock up. A run's end goes to the pool file (the job records it there); when that write failed,
        the job's log is the only place that has it."""
        super().release()


class FileStore(PoolStore):
    """One pool's state file (see the module docstring). Every method that writes takes the sidecar lock itself.

    Its sidecars: `<file>.lock` (the pool's lock), `<file>.refill.lock` and `<file>.refill.log` (the refill job's),
    and `<state dir>/code` (the job's code copy, shared by the pools of the directory)."""

    def __init__(self, path, pool_name):
        self.spec = StoreSpec.file(path, pool_name)
        self.path = path
        self.location = path
        self.pool_name = pool_name
        self.directory = os.path.dirname(path)
        self.lock_path = path + ".lock"
        self.code_dir = os.path.join(self.directory, CODE_DIR_NAME)
        self._directory_checked = False

    # -- files -------------------------------------------------------------------------------------
    def check_directory(self):
        """Refuse (StateFileError) a state directory or code directory others could change. Creates nothing;
        False when the state directory does not exist. Checked once per store: once it has passed, only we can
        change it."""
        if self._directory_checked:
            return True
        try:
            check_state_directory(self.directory)
        except FileNotFoundError:
            return False
        if os.path.lexists(self.code_dir):
            check_code_directory(self.code_dir)
        self._directory_checked = True
        return True

    def prepare(self, create=True, dry_run=False):
        """See PoolStore.prepare. The state directory is made when the pool is first written; it is checked here,
        so that init refuses one it could not use before it makes anything in EC2. Creates nothing."""
        if not self.check_directory():
            check_future_state_directory(self.directory)
        return True

    def ensure_directory(self):
        """Create the state directory private to its owner (0700); refuse one that others may change."""
        if not self.check_directory():
            make_private_directory(self.directory)
            if not self.check_directory():
                raise StateFileError("cannot create state directory %s" % self.directory, path=self.directory)

    def _read_text(self):
        try:
            fd = open_private(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError("cannot read %s: %s" % (self.path, exc.strerror), path=self.path)
        with os.fdopen(fd, "r", encoding="utf-8") as handle:
            return handle.read()

    def _parse(self, text):
        tags = "every pool instance carries the tag ec2spot:pool=%s" % self.pool_name
        try:
            state = json.loads(text)
        except ValueError as exc:
            claim = ["it is not valid JSON (%s)" % exc]
        else:
            claim = []
            if not isinstance(state, dict):
                claim.append("it is not a JSON object")
            else:
                if state.get("version") != STATE_VERSION:
                    claim.append("its version is %s, expected %d" % (shown_value(state.get("version")), STATE_VERSION))
                if state.get("pool_name") != self.pool_name:
                    owner = state.get("pool_name")
                    claim.append("it belongs to pool %s, not %r"
                                 % (repr(owner) if isinstance(owner, str) else shown_value(owner), self.pool_name))
        if claim:
            # Not recognisably this pool's file: maybe pool_file names the wrong file. Never moved by a plain rebuild.
            raise StateFileError(
                "pool file %s is not a pool file of pool '%s': %s. The file is left as it is. If "
                "pool_file (or state_dir) names the wrong file, correct it. If it is this pool's own file, damaged, "
                "ec2spot.pool.spot_pool_init with force_rebuild: true moves it aside (to %s.corrupt-<time>) and "
                "rebuilds the pool from EC2 (%s; ec2spot.pool.spot_pool_terminate finds them by it too)."
                % (self.path, self.pool_name, "; ".join(claim),
                   self.path, tags),
                kind="foreign", path=self.path,
            )
        problems = schema_problems(state)
        if problems:
            shown = problems[:5] + (["and %d more" % (len(problems) - 5)] if len(problems) > 5 else [])
            raise DamagedPool(
                "pool file %s is damaged: %s. The file is left as it is. ec2spot.pool.spot_pool_init with rebuild: "
                "true moves it aside (to %s.corrupt-<time>) and rebuilds the pool from EC2 (%s; "
                "ec2spot.pool.spot_pool_terminate finds them by it too)."
                % (self.path, "; ".join(shown), self.path, tags),
                path=self.path,
            )
        state.setdefault("refill", {})
        state.setdefault("cooldowns", [])
        state.setdefault("pending_launches", [])
        return state

    def _write_text(self, text):
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix="." + os.path.basename(self.path) + ".", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)  # mkstemp's 0600 is subject to the umask
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
        """The current state, or None when the pool has no file. Takes no lock and creates nothing (the file is
        only ever replaced whole, see the module docstring): info, check mode and the inventory write nothing."""
        if not self.check_directory():
            return None
        text = self._read_text()
        return None if text is None else self._parse(text)

    def exists(self):
        return os.path.exists(self.path)

    def _lock_existing(self):
        """The pool's lock, held; None when there is no pool file (then nothing is created)."""
        if not self.check_directory() or not os.path.lexists(self.path):
            return None
        if not os.path.lexists(self.lock_path):
            # First use of this file: make sure it is a pool file before putting a sidecar beside it
            # (pool_file=/etc/passwd must not leave /etc/passwd.lock, shadow-utils' own lock).
            text = self._read_text()
            if text is not None:
                self._parse(text)
        lock = FileLock(self.lock_path)
        lock.acquire()
        return lock

    @contextlib.contextmanager
    def transaction(self):
        """Read, let the caller change `tx.state`, write it back atomically if it changed, all under the lock.

        An exception inside the block writes nothing, so a failed step leaves the file as it was. Without a pool
        file nothing is locked or created unless the caller sets `tx.state` (a new pool): only then are the
        directory and the lock made, and the write is refused if another run created the pool meanwhile."""
        changed = False
        lock = self._lock_existing()
        try:
            text = self._read_text() if lock is not None else None
            tx = Transaction(None if text is None else self._parse(text))
            yield tx
            if tx.state is not None and text is None:
                if lock is None:
                    self.ensure_directory()
                    lock = FileLock(self.lock_path)
                    lock.acquire()
                if os.path.lexists(self.path):
                    raise StateFileError("pool file %s was created by another run meanwhile; run again" % self.path,
                                         path=self.path)
            if tx.discarded:
                pass
            elif tx.deleted:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                changed = True
            elif tx.state is not None:
                new_text = self.serialize(tx.state)
                if new_text != text:
                    self._write_text(new_text)
                    changed = True
        finally:
            if lock is not None:
                if os.path.lexists(self.path):
                    lock.release()
                else:
                    lock.remove()  # no pool (deleted, or gone meanwhile): its lock goes with it
        if changed:
            self._sync_directory()

    def claim_ready(self, dead, alive, lease_ttl, verify=True, verify_max_age=0, check_mode=False):
        """See PoolStore.claim_ready: one transaction (the lease is its write), no AWS call."""
        try:
            with self.transaction() as tx:
                state = tx.state
                if state is None:
                    return None
                now = utcnow()
                dropped, entry, unchecked = choose_claim(state, dead, alive,
                                                         not needs_verify(state, verify, verify_max_age, now))
                state["instances"] = [item for item in state["instances"] if item["id"] not in dead]
                lease = None
                if entry is not None:
                    lease = new_lease(entry, now, lease_ttl)
                    state["instances"].remove(entry)
                    state["leases"].append(lease)
                if check_mode:
                    tx.discard()  # leave the file exactly as it is
                return Claim(lease, counts(state), (state.get("refill") or {}).get("last_error"), dropped,
                             unchecked)
        except OSError as exc:  # the write failed (a full disk): the transaction wrote nothing, so nothing was leased
            raise PoolError("cannot write the pool file %s: %s; nothing was leased or changed"
                            % (self.path, exc.strerror or exc))

    def end_lease(self, instance_id, lease_id):
        """See PoolStore.end_lease."""
        with self.transaction() as tx:
            if tx.state is None:
                return None
            tx.state["leases"] = [item for item in tx.state["leases"]
                                  if (item["id"], item.get("lease_id")) != (instance_id, lease_id)]
            return counts(tx.state)

    def delete(self, refill_lock=None):
        """Remove the pool file and its lock file (under the lock), then the refill lock (`refill_lock` when the
        caller holds it; else only when no job holds it) and the refill logs. Creates nothing when there is no
        pool."""
        with self.transaction() as tx:
            if tx.state is not None:
                tx.delete()
        if not os.path.lexists(self.path) and self.check_directory():
            # A lock left beside no pool file (a crash, an older version): removed under the lock as well.
            lock = FileLock(self.lock_path)
            if lock.acquire(create=False):
                if os.path.lexists(self.path):
                    lock.release()
                else:
                    lock.remove()
        self.remove_refill_lock(refill_lock)
        if self.check_directory():
            for path in (self.refill_log_path(), self.refill_log_path() + ".1"):
                remove_own_file(path)

    # -- the refill job's lock and files ---------------------------------------------------------------
    def refill_lock(self):
        """See PoolStore.refill_lock: flock on `<file>.refill.lock`."""
        return _RefillLock(self.path + ".refill.lock", self)

    def refill_log_path(self):
        return self.path + ".refill.log"

    def code_directory(self):
        """`<state dir>/code` (checked when it exists), or None when there is no state directory."""
        return self.code_dir if self.check_directory() else None

    def code_directory_shared(self):
        """Whether another pool lives in this state directory (its next get would copy the code again)."""
        own = os.path.basename(self.path)
        for name in os.listdir(self.directory):
            if name == own or name.startswith(own + ".") or name.startswith("."):
                continue
            if name.endswith(".json") or name.endswith(".lock"):
                return True
        return False

    def move_aside(self, allow_foreign=False):
        """Move a damaged pool file (any unreadable one with `allow_foreign`) to `<file>.corrupt-<time>` under the
        lock; return where it went (None when there was nothing to move: gone, or valid by now)."""
        self.ensure_directory()
        lock = FileLock(self.lock_path)
        lock.acquire()
        try:
            try:
                text = self._read_text()
                if text is None:
                    return None
                self._parse(text)
                return None
            except StateFileError as exc:
                if not (exc.kind == "damaged" or (allow_foreign and exc.kind == "foreign")):
                    raise
            base = "%s.corrupt-%s" % (self.path, utcnow().strftime("%Y%m%dT%H%M%SZ"))
            aside, number = base, 1
            while os.path.lexists(aside):  # never over an earlier one
                number += 1
                aside = "%s-%d" % (base, number)
            os.rename(self.path, aside)
        finally:
            lock.release()
        self._sync_directory()
        return aside
