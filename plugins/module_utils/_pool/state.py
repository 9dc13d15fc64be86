# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The JSON file store (FileStore, the PoolStore of store.py): one JSON document per pool, guarded by flock on a
sidecar lock file. Beside it: the refill job's lock and log, and (in the state directory) its code copy.

Why a sidecar: writes replace the JSON file (temp file + fsync + os.replace), so a lock taken on the JSON
file itself would be held on an inode that is no longer the file; the `.lock` file is never replaced.
Writers hold the lock only around local file I/O, never around an AWS call or a spawn. Readers need no lock:
the file is only ever replaced whole, so a read sees one version or the next.

Nothing here trusts what another user could have written (the rules of OpenSSH's StrictModes): the state
directory must be ours and writable by nobody else, its parents writable by nobody else unless sticky (like
/tmp), and every file we open must be our own regular file, not a link, writable by nobody else. What we create
is private (directories 0700, files 0600) whatever the umask. A sidecar (lock) is only ever created beside a
valid pool file, or for a pool being created: reading something that is not a pool file leaves no trace.

This module imports nothing heavy: it sits on the hand-out path of `spot_pool_get`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import tempfile
import time

from .defaults import FALLBACK_ACTIONS
from .entries import counts
from .entries import new_lease
from .errors import InvalidRequest
from .errors import PoolError
from .errors import StateFileError
from .store import Claim
from .store import PoolStore
from .store import choose_claim
from .store import needs_verify
from .timefmt import TIME_RE
from .timefmt import utcnow

STATE_VERSION = 1
# Matched with fullmatch(): `$` would also accept a name followed by a newline ("ci\n" is not pool "ci").
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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


# -- trust: directories and files ---------------------------------------------------------------------------------
CODE_DIR_NAME = "code"  # <state dir>/code: the refill job's code copy (jobcontrol.py)


def _mode(info):
    return "%04o" % stat.S_IMODE(info.st_mode)


def _refuse(message, path):
    raise StateFileError(message, kind="unsafe", path=path)


def check_own_directory(path, what, fix):
    """Refuse a directory that is not ours or that others may write to (StrictModes). `path` must exist."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        _refuse("%s %s is not a directory (it is a link or a file); %s" % (what, path, fix), path)
    if info.st_uid != os.geteuid():
        _refuse("%s %s belongs to another user (uid %d), who could change what is in it; %s"
                % (what, path, info.st_uid, fix), path)
    if info.st_mode & 0o022:
        _refuse("%s %s can be written by other users (mode %s), who could change what is in it; %s"
                % (what, path, _mode(info), fix), path)


def check_state_directory(directory):
    """Refuse a state directory another user could change, or whose parents another user could change (they could
    rename it away and put their own in its place). Raises FileNotFoundError when it does not exist."""
    real = os.path.realpath(directory)
    check_own_directory(real, "state directory", "run 'chmod 700 %s' if it is yours, or choose a state_dir of "
                        "your own (the default is private: ~/.local/state/ec2spot)" % real)
    if real != os.path.dirname(real):
        _check_parents(real, os.path.dirname(real))


def check_future_state_directory(directory):
    """check_state_directory() for a state directory that may not exist yet, before anything is made for the pool
    (init checks it before it makes anything in EC2): an existing one is checked as it is; for a missing one, the
    directories made for it will be ours and private (make_private_directory), so the existing directories above
    it must pass the rules for its parents. Creates nothing."""
    real = os.path.realpath(directory)
    existing = real
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if existing == real:
        check_state_directory(real)
    else:
        _check_parents(real, existing)


def _check_parents(real, first):
    """Refuse the state directory `real` when `first` or a directory above it belongs to another user, or can be
    written by others without being sticky (they could replace the state directory)."""
    uid = os.geteuid()
    parent = first
    while True:
        info = os.stat(parent)
        if info.st_uid not in (0, uid):
            _refuse("the parent %s of state directory %s belongs to another user (uid %d), who could replace the "
                    "state directory; choose a state_dir under a directory of yours" % (parent, real, info.st_uid),
                    parent)
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            _refuse("the parent %s of state directory %s can be written by other users (mode %s), who could "
                    "replace the state directory; run 'chmod go-w %s' or choose a state_dir under a directory of "
                    "yours" % (parent, real, _mode(info), parent), parent)
        if parent == os.path.dirname(parent):
            return
        parent = os.path.dirname(parent)


def check_code_directory(path):
    """The refill job runs code from here with your credentials: only ever from a directory of ours alone."""
    check_own_directory(path, "refill code directory", "remove it ('rm -r %s'; it is made again, private)" % path)


def make_private_directory(path):
    """Create `path` and its missing parents with mode 0700, whatever the umask."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile (by another run): checked like any other
        # The umask may have taken bits away (then we could not use it ourselves): exactly 0700.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


def open_private(path, flags):
    """Open a file of ours: created 0600 (whatever the umask), never through a symlink, refused if it is not a
    regular file, if another user owns it, or if others may write to it."""
    # O_NOFOLLOW: a symlink planted where the state lives must not redirect our writes. O_NONBLOCK: a FIFO put
    # there must not hang us before it is refused below (it changes nothing for a regular file).
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse("%s is a symbolic link; refusing to follow it. Remove the link." % path, path)
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            _refuse("%s is not a regular file; refusing to use it" % path, path)
        if info.st_uid != os.geteuid():
            _refuse("%s belongs to another user (uid %d); refusing to use it. Remove it, or choose a state_dir "
                    "(or pool_file) of your own" % (path, info.st_uid), path)
        if info.st_mode & 0o022:
            _refuse("%s can be written by other users (mode %s); refusing to use it. Run 'chmod 600 %s'"
                    % (path, _mode(info), path), path)
        if flags & os.O_CREAT and not info.st_mode & 0o077 and stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)  # created under a umask that took our own bits away
    except BaseException:
        os.close(fd)
        raise
    return fd


def same_file(fd, path):
    """Whether the open file `fd` is still the file at `path` (not removed or replaced meanwhile)."""
    try:
        at_path = os.lstat(path)
    except FileNotFoundError:
        return False
    info = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (info.st_dev, info.st_ino)


class FileLock:
    """flock on a file that is never replaced. Closing the descriptor (or the process dying) releases it.

    Whoever holds the lock may remove the file (remove()): a process that opened it before and waited for the lock
    then finds that the file it locked is no longer the one at the path, and locks the one there now (or reports
    that there is none). That is what lets spot_pool_terminate clean up without a race."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def acquire(self, blocking=True, timeout=None, create=True):
        """Take the lock; False if `blocking` is off (or `timeout` runs out) and someone else holds it, or if the
        lock file does not exist and `create` is off."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fd = open_private(self.path, os.O_RDWR | (os.O_CREAT if create else 0))
            except FileNotFoundError:
                if create:
                    raise StateFileError("cannot create lock file %s: its directory does not exist" % self.path,
                                         path=self.path)
                return False
            except OSError as exc:
                raise StateFileError("cannot open lock file %s: %s" % (self.path, exc.strerror), path=self.path)
            if not self._flock(fd, blocking, deadline):
                os.close(fd)
                return False
            if same_file(fd, self.path):
                self.fd = fd
                return True
            os.close(fd)  # removed by its holder while we waited: lock the file at the path now

    @staticmethod
    def _flock(fd, blocking, deadline):
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking and deadline is None else fcntl.LOCK_NB))
                return True
            except BlockingIOError:
                if not blocking or time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    @property
    def held(self):
        return self.fd is not None

    def exists(self):
        """Whether the lock file exists (someone made it: acquire() with `create`)."""
        return os.path.lexists(self.path)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self):
        """Delete the lock file while holding it (see the class), then release it."""
        if self.fd is not None and same_file(self.fd, self.path):
            os.unlink(self.path)
        self.release()

    def renew(self):
        """A flock lasts as long as its holder: nothing to renew (the DynamoDB store's lease expires)."""

    def is_held_elsewhere(self):
        """True while another open file description holds the lock (e.g. a running refill job). Creates nothing."""
        if self.fd is not None:
            return False
        if self.acquire(blocking=False, create=False):
            self.release()
            return False
        return os.path.lexists(self.path)


# -- the schema: checked once, at read, for every reader -----------------------------------------------------------
_ENTRY_STRINGS = ("ip", "public_ip", "private_ip", "type", "availability_zone", "subnet_id", "instance_type")
_LAUNCH_STRINGS = ("image_id", "key_name", "iam_instance_profile", "user_data", "region", "allocation_strategy",
                   "fallback_action")
_LAUNCH_LISTS = ("availability_zones", "subnet_ids", "security_group_ids", "fallback_on")
_TIME_FORMAT = "a time like 2026-11-22T10:00:00Z"


def _shown(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_time(value):
    return value is None or (isinstance(value, str) and TIME_RE.match(value) is not None)


def _is_number(value, minimum=0):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum


def _check_fields(problems, where, item, strings=(), times=(), required_strings=()):
    for key in required_strings:
        if not isinstance(item.get(key), str) or not item.get(key):
            problems.append("%s.%s is %s, expected a non-empty string" % (where, key, _shown(item.get(key))))
    for key in strings:
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            problems.append("%s.%s is %s, expected a string or null" % (where, key, _shown(value)))
    for key in times:
        if not _is_time(item.get(key)):
            problems.append("%s.%s is %s, expected %s or null" % (where, key, _shown(item.get(key)), _TIME_FORMAT))


def _check_list(problems, state, key, check):
    items = state.get(key, [])
    if not isinstance(items, list):
        problems.append("%s is %s, expected a list" % (key, _shown(items)))
        return
    for index, item in enumerate(items):
        where = "%s[%d]" % (key, index)
        if isinstance(item, dict):
            check(problems, where, item)
        else:
            problems.append("%s is %s, expected an object" % (where, _shown(item)))


def _check_instance(problems, where, item):
    _check_fields(problems, where, item, strings=_ENTRY_STRINGS, times=("launched_at",), required_strings=("id",))


def _check_lease(problems, where, item):
    _check_fields(problems, where, item, strings=_ENTRY_STRINGS, times=("launched_at", "leased_at", "expires_at"),
                  required_strings=("id",))


def _check_cooldown(problems, where, item):
    _check_fields(problems, where, item, strings=("market", "instance_type", "location"), times=("until",),
                  required_strings=("scope", "code"))


def _check_pending(problems, where, item):
    _check_fields(problems, where, item, times=("at",), required_strings=("token",))
    if not isinstance(item.get("request"), dict):
        problems.append("%s.request is %s, expected an object" % (where, _shown(item.get("request"))))


def _check_launch(problems, launch):
    types = launch.get("instance_types")
    if not (isinstance(types, list) and types and all(isinstance(name, str) and name for name in types)):
        problems.append("launch.instance_types is %s, expected a non-empty list of instance types" % _shown(types))
    _check_fields(problems, "launch", launch, strings=_LAUNCH_STRINGS)
    for key in _LAUNCH_LISTS:
        value = launch.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            problems.append("launch.%s is %s, expected a list of strings" % (key, _shown(value)))
    tags = launch.get("tags")
    if tags is not None and not (isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())):
        problems.append("launch.tags is %s, expected an object of strings" % _shown(tags))
    if launch.get("fallback") is not None and not isinstance(launch.get("fallback"), bool):
        problems.append("launch.fallback is %s, expected true or false" % _shown(launch.get("fallback")))
    if launch.get("fallback_action") is not None and launch.get("fallback_action") not in FALLBACK_ACTIONS:
        problems.append("launch.fallback_action is %s, expected one of %s"
                        % (_shown(launch.get("fallback_action")), ", ".join(FALLBACK_ACTIONS)))
    for key in ("cooldown_seconds", "orphan_grace_seconds"):
        if launch.get(key) is not None and not _is_number(launch.get(key)):
            problems.append("launch.%s is %s, expected a number of seconds" % (key, _shown(launch.get(key))))
    for key in ("launch_template", "template"):
        if launch.get(key) is not None and not isinstance(launch.get(key), dict):
            problems.append("launch.%s is %s, expected an object or null" % (key, _shown(launch.get(key))))
    template = launch.get("template") or {}
    if isinstance(template, dict):
        _check_fields(problems, "launch.template", template, strings=("LaunchTemplateId", "Version"))
        if template.get("owned") is not None and not isinstance(template.get("owned"), bool):
            problems.append("launch.template.owned is %s, expected true or false" % _shown(template.get("owned")))


def schema_problems(state):
    """What is wrong with the fields of a pool state (a dict that claims to be one), as `field is x, expected y`.

    Checked once, when the file is read: every reader (init, get, release, terminate, info, the refill job, the
    inventory) can then use the fields without a KeyError or TypeError that would not name the file."""
    problems = []
    size = state.get("target_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append("target_size is %s, expected an integer of 0 or more" % _shown(size))
    launch = state.get("launch")
    if isinstance(launch, dict):
        _check_launch(problems, launch)
    else:
        problems.append("launch is %s, expected an object" % _shown(launch))
    for key in ("instances", "leases"):
        if key not in state:
            problems.append("%s is missing" % key)
    _check_list(problems, state, "instances", _check_instance)
    _check_list(problems, state, "leases", _check_lease)
    _check_list(problems, state, "cooldowns", _check_cooldown)
    _check_list(problems, state, "pending_launches", _check_pending)
    refill = state.get("refill", {})
    if not isinstance(refill, dict):
        problems.append("refill is %s, expected an object" % _shown(refill))
    else:
        pid = refill.get("pid")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
            problems.append("refill.pid is %s, expected a process id or null" % _shown(pid))
        _check_fields(problems, "refill", refill, strings=("last_error",),
                      times=("started_at", "finished_at", "verified_at"))
    return problems


class Transaction:
    """What a caller of FileStore.transaction() sees: the state (None when there is no pool) to change."""

    def __init__(self, state):
        self.state = state
        self.deleted = False
        self.discarded = False

    def delete(self):
        self.state = None
        self.deleted = True

    def discard(self):
        """Write nothing, whatever the state now is (check mode)."""
        self.discarded = True


class _RefillLock(FileLock):
    """The refill lock beside a pool file: acquiring it with `create` first makes the state directory (private),
    like any first write of the pool would."""

    def __init__(self, path, store):
        super().__init__(path)
        self._store = store

    def acquire(self, blocking=True, timeout=None, create=True):
        if create:
            self._store.ensure_directory()
        return super().acquire(blocking, timeout, create)


def _remove_own_file(path):
    """Unlink `path` if it is our own regular file (not a link, not someone else's)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
        os.unlink(path)


class FileStore(PoolStore):
    """One pool's state file (see the module docstring). Every method that writes takes the sidecar lock itself.

    Its sidecars: `<file>.lock` (the pool's lock), `<file>.refill.lock` and `<file>.refill.log` (the refill job's),
    and `<state dir>/code` (the job's code copy, shared by the pools of the directory)."""

    def __init__(self, path, pool_name):
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
                    claim.append("its version is %s, expected %d" % (_shown(state.get("version")), STATE_VERSION))
                if state.get("pool_name") != self.pool_name:
                    owner = state.get("pool_name")
                    claim.append("it belongs to pool %s, not %r"
                                 % (repr(owner) if isinstance(owner, str) else _shown(owner), self.pool_name))
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
            raise StateFileError(
                "pool file %s is damaged: %s. The file is left as it is. ec2spot.pool.spot_pool_init with rebuild: "
                "true moves it aside (to %s.corrupt-<time>) and rebuilds the pool from EC2 (%s; "
                "ec2spot.pool.spot_pool_terminate finds them by it too)."
                % (self.path, "; ".join(shown), self.path, tags),
                kind="damaged", path=self.path,
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
                _remove_own_file(path)

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

    def job_arguments(self):
        return ["--state-file", self.path, "--pool-name", self.pool_name]

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
