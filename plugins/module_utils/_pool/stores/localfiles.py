# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private local files: the state directory's and the code directory's checks, files opened only when they are our
own, and FileLock (flock on a sidecar that is never replaced). The file store keeps its pool here; the DynamoDB store
keeps here only what a controller keeps locally (the refill job's log and code copy).

Nothing here trusts what another user could have written (the rules of OpenSSH's StrictModes): the state
directory must be ours and writable by nobody else, its parents writable by nobody else unless sticky (like
/tmp), and every file we open must be our own regular file, not a link, writable by nobody else. What we create
is private (directories 0700, files 0600) whatever the umask."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from ..domain.errors import InvalidRequest
from ..domain.errors import StateFileError
from ..domain.pool import check_pool_name


def default_state_dir(environ=None):
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ec2spot")


def state_directory(state_dir=None):
    """The absolute state directory that the option `state_dir` names (the user's default when not given)."""
    return os.path.abspath(os.path.expanduser(state_dir or default_state_dir()))


def pool_file_path(pool_name, state_dir=None, pool_file=None):
    if not pool_name:
        # Never a fallback to the pool `default`: an unset variable (`pool_name: "{{ name }}"`, `-e name=`) must not
        # select, and end, another pool.
        raise InvalidRequest("pool_name is empty: name the pool explicitly (for the default pool, pool_name: default)")
    check_pool_name(pool_name)
    if pool_file:
        return os.path.abspath(os.path.expanduser(pool_file))
    return os.path.join(state_directory(state_dir), pool_name + ".json")


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


def remove_own_file(path):
    """Unlink `path` if it is our own regular file (not a link, not someone else's)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
        os.unlink(path)
