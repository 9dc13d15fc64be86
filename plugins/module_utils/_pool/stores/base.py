# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the operations (operations.py), the refill and its job control need from a pool store, and nothing more.

A store keeps one pool's state (the document that domain/pool.py and domain/entries.py describe). The JSON file
store (filestore.FileStore) is the default; the DynamoDB store (dynamodb.DynamoStore: one item per instance,
conditional writes)
implements the same methods, so that nothing outside a store knows about files, flock, tables or paths.

`PoolStore` below is the contract: a plain class whose methods raise NotImplementedError (no `typing`, no abc:
this module is on the hand-out path of `spot_pool_get`, and `typing` alone costs ~3 ms there).

Which entry a hand-out takes is decided by domain/claim.py (choose_claim, needs_verify): pure functions of values
that every store calls on the pool it read, so the rule is one, whatever the store.
"""

from __future__ import annotations

from ..domain.errors import StoreConflict

# How many times change_pool() tries a change that conflicts with another controller's write.
CONFLICT_ATTEMPTS = 5


def change_pool(store, change, attempts=CONFLICT_ATTEMPTS):
    """Run `change(tx)` inside store.transaction() and return what it returns; when the write meets another
    controller's (StoreConflict: nothing was written), read the pool again and run `change` again, up to `attempts`
    times. So `change` must be a function of `tx.state` alone (it may run more than once). The file store's
    transaction holds a lock and never conflicts: one run."""
    for attempt in range(1, attempts + 1):
        try:
            with store.transaction() as tx:
                return change(tx)
        except StoreConflict:
            if attempt >= attempts:
                raise
    return None  # attempts < 1: nothing was tried


# -- the interface --------------------------------------------------------------------------------------------------
class Claim:
    """What one claim_ready() found.

    - ``lease``: the lease written (entries.new_lease()), or None when nothing was handed out;
    - ``counts``: entries.counts() of the pool after the claim;
    - ``refill_error``: the refill job's last recorded error (None when it has none);
    - ``dropped``: ids of the entries dropped because the caller reported them dead;
    - ``unchecked``: when no lease was made because a check with EC2 is needed, the ready entries to ask EC2
      about first (in the pool's order); otherwise empty."""

    def __init__(self, lease=None, counts=None, refill_error=None, dropped=None, unchecked=None):
        self.lease = lease
        self.counts = counts
        self.refill_error = refill_error
        self.dropped = list(dropped or [])
        self.unchecked = list(unchecked or [])


class PoolStore:
    """The interface of a pool store: one pool, named `pool_name`, kept where `location` says.

    Every method that changes the pool is atomic: a second caller (another process, another controller) sees the
    pool before or after it, never in between, and an exception inside a change writes nothing.

    The refill job's own things (its lock, its log, its code copy) live on the machine that runs the job; the store
    says where, since it knows where the pool lives."""

    #: Where the pool lives, as one value (spec.StoreSpec): opening.open_store(store.spec, client) opens this store
    #: again; the refill job's command line is store.spec.job_arguments().
    spec = None
    #: The pool's name (validated by the store's maker).
    pool_name = None
    #: Where the pool lives, as error messages show it to users (the file store: the JSON file's path).
    location = None
    #: How long the refill lease lasts unless renewed, in seconds; None when it lasts as long as its holder runs
    #: (the file store's flock). The refill job renews it three times per length (refill.LeaseKeeper).
    lease_seconds = None

    # -- the pool ------------------------------------------------------------------------------------------------
    def read(self):
        """The pool's state (a dict, checked against the schema), or None when there is no pool. Takes no lock,
        creates and changes nothing: info, check mode and the inventory only read."""
        raise NotImplementedError

    def exists(self):
        """Whether the pool exists (cheaper than read(): no parse, no schema check)."""
        raise NotImplementedError

    def prepare(self, create=True, dry_run=False):
        """Make sure the pool has a place to live, before init writes it: the DynamoDB store's table (made when
        missing and `create`; an error naming the table when missing and not `create`, of another shape, or not
        allowed). With `dry_run`, nothing is made: returns False when the place is missing and would be made.
        The file store makes its directory as it writes: nothing to do."""
        return True

    def transaction(self):
        """A context manager: the one atomic read-change-write of the whole pool. Yields a transaction object
        whose `state` is the pool (None when there is none) for the caller to change in place or replace; setting
        `state` on a pool that did not exist creates it; `delete()` on it deletes the pool. Written when the block
        ends without an exception and the state changed; an exception writes nothing."""
        raise NotImplementedError

    def claim_ready(self, dead, alive, lease_ttl, verify=True, verify_max_age=0, check_mode=False):
        """Hand out one ready entry, atomically: one winner per entry, however many callers race.

        In one atomic step: drop the entries whose ids are in `dead` (EC2 said they are not running), then lease
        the entry choose_claim() picks (any ready one, unless needs_verify() says EC2 must be asked: then only one
        whose id is in `alive`, which EC2 has just reported running), as entries.new_lease(entry, now, lease_ttl).
        The drops are written even when nothing is handed out. With `check_mode`, nothing is written and the
        Claim says what would have happened. No AWS call of the pool's instances is made here.

        Returns a Claim, or None when there is no pool (nothing is created). A write that fails raises PoolError
        (nothing was leased or changed)."""
        raise NotImplementedError

    def end_lease(self, instance_id, lease_id):
        """Remove the lease of `instance_id` whose lease_id is `lease_id` (None: a lease without one), atomically;
        any other lease, even of the same instance, stays. Returns entries.counts() after it, or None when there is
        no pool (nothing is created). Ending the instance itself is the caller's (ending.py)."""
        raise NotImplementedError

    def delete(self, refill_lock=None):
        """Delete the pool and everything the store keeps for it (the refill job's lock and log included); the
        refill lock `refill_lock`, when the caller holds it (terminate does, so that no job runs meanwhile), is
        removed while held. Creates nothing when there is no pool. Returns warnings that name what it left in
        place (the DynamoDB store: items of the pool's partition that are not its own, or are damaged); [] or None
        when it left nothing."""
        raise NotImplementedError

    def move_aside(self, allow_foreign=False):
        """Set a damaged pool aside for a rebuild (spot_pool_init rebuild: true): what read() refused as damaged
        (DamagedPool) is kept where the user can look at it (the file store: the file moved to
        `<file>.corrupt-<time>`; the DynamoDB store: the pool's items copied to a private file, the damaged ones
        taken out of the pool's way) and returned as that place; None when nothing is damaged (by now). With
        `allow_foreign`, a file store also sets aside a file that is not recognisably this pool's."""
        raise NotImplementedError

    # -- the refill job's lease and files -------------------------------------------------------------------------
    def refill_lock(self):
        """The pool's refill lease, a RefillLease: held by the running refill job for as long as it runs (and by
        init and terminate while they work). Making the object takes and creates nothing."""
        raise NotImplementedError

    def remove_refill_lock(self, refill_lock=None):
        """Part of delete(), the same for every store: remove the refill lock `refill_lock` that the caller holds,
        or, without it, the pool's refill lock if no job holds it (a running job keeps its lock)."""
        if refill_lock is None or not refill_lock.held:
            refill_lock = self.refill_lock()
            if not refill_lock.acquire(blocking=False, create=False):
                refill_lock = None
        if refill_lock is not None:
            refill_lock.remove()

    def refill_log_path(self):
        """The local file the refill job writes its JSON lines to (and `<it>.1`, the previous one)."""
        raise NotImplementedError

    def code_directory(self):
        """The local directory for the refill job's code copy (the job runs from it, with the user's credentials:
        it must be ours alone; jobcontrol makes it private and checks it). None when the place for it does not exist
        (then there is no pool here to start a job for)."""
        raise NotImplementedError

    def code_directory_shared(self):
        """Whether another pool may still use the code directory (so a terminate leaves the code copy there)."""
        raise NotImplementedError


class RefillLease:
    """The interface of a pool's refill lease (PoolStore.refill_lock()). A lease that only one machine sees (the
    file store's flock) has nothing more to say than acquire/release; a lease that several controllers share (the
    DynamoDB store's item) also carries stop requests and how the last run ended: the defaults below are what a
    lease without them answers, so that callers never ask a lease what kind it is."""

    #: Whether this process holds the lease.
    held = False

    def acquire(self, blocking=True, timeout=None, create=True):
        """Take the lease: True once held; False when someone else holds it and `blocking` is off or `timeout` runs
        out; with `create` off, also False when no lease was ever made here (nothing is made)."""
        raise NotImplementedError

    def release(self, exit_error=None, exit_code=None):
        """Give the lease up. `exit_error`/`exit_code`: how the run ended, when the job could not write it to the
        pool itself; a lease that can keep it does (see last_exit), another drops it (the job's log has it)."""
        raise NotImplementedError

    def remove(self):
        """Delete the lease while holding it (the pool is being deleted)."""
        raise NotImplementedError

    def exists(self):
        """Whether a lease was ever made for the pool here."""
        raise NotImplementedError

    def is_held_elsewhere(self):
        """Whether another process (or controller) holds the lease now."""
        raise NotImplementedError

    def renew(self):
        """Extend a held lease; returns a stop request another controller made, or None. A lease that never
        expires has nothing to extend."""
        return None

    def acquire_stopping(self, timeout, create=True):  # pylint: disable=unused-argument
        """Take the lease within `timeout` seconds, asking its holder to stop first where a request can reach it
        (a shared lease; a local job is stopped by signal, jobcontrol.stop_refill). `create` matters only to a
        lease that records requests on an item: a local lease is made as any acquire makes it."""
        return self.acquire(timeout=timeout)

    def stop_report(self):
        """After acquire_stopping() failed: the unanswered stop request ({"holder", "until", "asked_at",
        "answered"}), or None when no request was made."""
        return None

    def holder_elsewhere(self):
        """Who holds the lease on another controller ("host:pid:..."), or None (nobody, or this machine)."""
        return None

    def last_exit(self, cached=False):  # pylint: disable=unused-argument
        """How the last run that held the lease ended, as the lease recorded it ({"by", "released", "error",
        "error_code", "log", ...}), or None when the lease records no ends (the file store: the job writes its end
        to the pool file) or has nothing to say."""
        return None


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
