# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors of the pool domain. Modules catch PoolError once in main() and turn it into fail_json."""

from __future__ import annotations


class PoolError(Exception):
    """A failure the user can act on; `details` end up in the module result next to `msg`."""

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class StateFileError(PoolError):
    """The pool file is unreadable, corrupt or belongs to something else; it is never overwritten. (DamagedPool,
    below, is one of these for every store: the name is the file store's, the first store.)

    `kind` says what `spot_pool_init` may do about it: "damaged" (a file of this pool, broken: `rebuild` moves
    it aside), "foreign" (not recognisably this pool's file: only `force_rebuild` moves it aside) or "unsafe"
    (a file or directory others could change, a link: never touched, the user must fix it)."""

    def __init__(self, message, kind="unsafe", **details):
        super().__init__(message, **details)
        self.kind = kind


class DamagedPool(StateFileError):
    """This pool's own stored state is damaged, in any store: a pool file whose fields are wrong, DynamoDB items of
    the pool the store does not understand (a body that is not JSON, a status that is neither idle nor leased, no
    rev...). Nothing reads past it and nothing overwrites or deletes it; the message names where (the file, the
    table and the items) and that spot_pool_init with rebuild: true rebuilds the pool from EC2's tags, keeping a
    copy of what was damaged (the store's move_aside). `kind` is always "damaged"."""

    def __init__(self, message, **details):
        super().__init__(message, kind="damaged", **details)


class NoReadyInstance(PoolError):
    """`get` found nothing to hand out."""


class InvalidRequest(PoolError):
    """Bad option values found before anything was changed (unknown zone, bad instance type, ...)."""


class LaunchError(PoolError):
    """EC2 refused every offering (or the error is not one the launcher may work around)."""


class StoreConflict(PoolError):
    """A conditional write found the pool changed since it was read (another controller wrote meanwhile). Nothing
    of the change was written; the caller may read again and redo it (store.retry_on_conflict)."""


class RefillLeaseLost(PoolError):
    """A write made under the refill lease found that the lease is no longer ours (it expired and another
    controller took it): nothing was written. The job must stop."""
