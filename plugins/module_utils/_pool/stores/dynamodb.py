# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The DynamoDB store (DynamoStore, the PoolStore of base.py): one pool shared by any number of controllers.

One table holds any number of pools: partition key `pool` (the pool's name), sort key `item`. So one strongly
consistent, paginated Query reads a whole pool. The items of a pool (docs/architecture.md, "Store", has the table):

- `item = "pool"`: the pool's settings and bookkeeping (`body`: the JSON of the state without its instances and
  leases: target size, launch settings, cool-downs, pending launch tokens, the refill's record), and `version`,
  a number every whole-pool write increments and is conditioned on;
- `item = "inst#<instance id>"`: one instance, `status` `idle` (an entry) or `leased` (a lease; `lease_id` and,
  when it expires, `expires` in epoch seconds), `body` (the entry or lease as JSON, as the file store keeps it),
  `rev` (incremented on every write of the item: a conditional write says "unchanged since I read it") and `pos`
  (the order of the pool's lists);
- `item = "lease#<instance id>#<lease id>"`: a second lease of an instance whose `inst#` item is taken (the file
  schema allows it: a lease rebuilt from tags beside a newer one); same attributes;
- `item = "refill-lease"`: the refill's lease: `holder`, `expires` (epoch seconds), `fencing` (incremented on
  every acquisition, so a write of a holder that lost the lease is told apart from the new holder's), and `stop`
  while another controller asks the holder to stop (terminate, init: jobcontrol.stop_refill): who asked, when, and
  the `expires` the holder had then; the holder's renew() answers it, and the next acquisition clears it.

A hand-out is one Query and one conditional UpdateItem (idle -> leased, condition: `rev` unchanged since the read);
the whole-pool change (transaction()) writes only the items that differ, in one TransactWriteItems, every item
conditioned on what was read, the pool item on its `version`, and on the refill lease when this store holds it.
Lease expiry is compared against the caller's clock, never left to DynamoDB's TTL. No credential is written.

Bodies are JSON strings, not DynamoDB maps: the state then reads back exactly as written (no Decimal, no empty-
string rules), and the schema check of the file store (state.schema_problems) applies unchanged.

The client is the caller's, with one attempt per call, so our jittered, capped retry is the only retry layer: on the
hand-out path dynamoquery.DynamoDBClient (spot_pool_get, via common.dynamodb_client), elsewhere a boto3 DynamoDB
client with the collection's BOTOCORE_CONFIG. Nothing here imports the EC2 parts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time

from .._aws import retry
from .._aws.signing import exceptions as botocore_exceptions
from ..domain.claim import choose_claim
from ..domain.claim import needs_verify
from ..domain.defaults import DEFAULT_TABLE  # noqa: F401 pylint: disable=unused-import
from ..domain.entries import counts
from ..domain.entries import new_lease
from ..domain.errors import DamagedPool
from ..domain.errors import PoolError
from ..domain.errors import RefillLeaseLost
from ..domain.errors import StoreConflict
from ..domain.pool import entry_problems
from ..domain.pool import schema_problems
from ..domain.timefmt import isoformat
from ..domain.timefmt import parse_time
from ..domain.timefmt import utcnow
from .base import Claim
from .base import PoolStore
from .base import RefillLease
from .base import Transaction
from .localfiles import check_code_directory
from .localfiles import check_state_directory
from .localfiles import make_private_directory
from .localfiles import open_private
from .spec import StoreSpec

POOL_ITEM = "pool"
LEASE_ITEM = "refill-lease"
INSTANCE_PREFIX = "inst#"
EXTRA_LEASE_PREFIX = "lease#"
ENTRY_PREFIXES = (INSTANCE_PREFIX, EXTRA_LEASE_PREFIX)
IDLE = "idle"
LEASED = "leased"
# Seconds a refill lease lasts unless renewed: long enough for one refill pass, short enough that a job torn down
# with its runner is replaced within minutes.
REFILL_LEASE_SECONDS = 300
# A claim that loses this many races in a row reads the pool again (its read is stale), up to MAX_READS reads.
LOSSES_BEFORE_REREAD = 2
MAX_READS = 3
# A TransactWriteItems cancelled only for passing reasons (retry.TRANSACTION_PASSING_REASONS) is tried again, up to
# retry.CALLS.attempts in all.
# TransactWriteItems takes at most 100 items.
TRANSACTION_LIMIT = 100
# The IAM action each call needs, for the AccessDenied message.
_ACTIONS = {"Query": "Query", "GetItem": "GetItem", "UpdateItem": "UpdateItem", "DeleteItem": "DeleteItem",
            "PutItem": "PutItem", "TransactWriteItems": "UpdateItem, PutItem, DeleteItem and ConditionCheckItem",
            "DescribeTable": "DescribeTable", "CreateTable": "CreateTable"}
KEY_SCHEMA = [{"AttributeName": "pool", "KeyType": "HASH"}, {"AttributeName": "item", "KeyType": "RANGE"}]


@contextlib.contextmanager
def _unless_client_error():
    """contextlib.suppress(ClientError), with botocore imported only when something was raised (a get that
    succeeds imports none: see signing.exceptions)."""
    try:
        yield
    except botocore_exceptions().ClientError:
        pass


def _code(exc):
    return exc.response.get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""


def _s(value):
    return {"S": value}


def _n(value):
    return {"N": str(value)}


def _dump(value):
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _instance_key(entry, lease=False):
    if lease:
        return "%s%s#%s" % (EXTRA_LEASE_PREFIX, entry["id"], entry.get("lease_id") or "-")
    return INSTANCE_PREFIX + entry["id"]


def _epoch(text):
    moment = parse_time(text) if text else None
    return None if moment is None else int(moment.timestamp())


def _is_own(key):
    """Whether an item key of the pool's partition is one the store writes for the pool's state (the refill lease
    is the job's; any other key is another tool's, which the store reads past and never deletes)."""
    return key == POOL_ITEM or key.startswith(ENTRY_PREFIXES)


def _number(item, name):
    """The integer of an item's N attribute `name`, or None when it has none (or another type)."""
    try:
        return int(item[name]["N"])
    except (KeyError, TypeError, ValueError):
        return None


def _string(item, name):
    value = item.get(name)
    return value.get("S") if isinstance(value, dict) and isinstance(value.get("S"), str) else None


def _shown(attribute):
    text = _dump(attribute) if attribute is not None else "missing"
    return text if len(text) <= 40 else text[:37] + "..."


def _entry_id(key):
    """The instance id an entry item's key names (inst#<id>, lease#<id>#<lease id>)."""
    if key.startswith(INSTANCE_PREFIX):
        return key[len(INSTANCE_PREFIX):]
    return key[len(EXTRA_LEASE_PREFIX):].split("#", 1)[0]


def item_problems(key, item, pool_name):
    """(body, problems) of one of the pool's own items (`key`, as the Query returned it): its body's JSON, and what
    is wrong with the item ([] when the store understands it). Pure: no call, no clock."""
    problems = []
    body = None
    text = _string(item, "body")
    if text is None:
        problems.append("body is %s, expected a string of JSON" % _shown(item.get("body")))
    else:
        try:
            body = json.loads(text)
        except ValueError as exc:
            problems.append("body is not JSON (%s)" % exc)
    if key == POOL_ITEM:
        if _number(item, "version") is None:
            problems.append("version is %s, expected a number" % _shown(item.get("version")))
        if body is not None and not (isinstance(body, dict) and body.get("pool_name") == pool_name):
            problems.append("its body is not a pool of %r" % pool_name)
        elif body is not None:
            problems += schema_problems(dict(body, instances=[], leases=[]))
        return body, problems
    status = _string(item, "status")
    if status not in (IDLE, LEASED):
        problems.append("status is %s, expected \"%s\" or \"%s\"" % (_shown(item.get("status")), IDLE, LEASED))
    problems += ["%s is %s, expected a number" % (name, _shown(item.get(name)))
                 for name in ("rev", "pos") if _number(item, name) is None]
    if body is not None:
        problems += entry_problems("body", body, lease=status == LEASED)
        if isinstance(body, dict) and isinstance(body.get("id"), str) and body["id"] != _entry_id(key):
            problems.append("its body is of instance %s" % body["id"])
    return body, problems


def read_items(items, pool_name):
    """({key: body} of the pool's own items, {key: problems} of those the store does not understand)."""
    bodies, damage = {}, {}
    for key, item in items.items():
        if _is_own(key):
            bodies[key], problems = item_problems(key, item, pool_name)
            if problems:
                damage[key] = problems
    return bodies, damage


def _salvaged_lease(key, item, now):
    """The lease a rebuild keeps for a damaged entry item that may be a job's lease (its status is not "idle"), or
    None for one that says it is idle: what of its body is an object is kept, its id is the key's, and it is
    leased (at `now` unless the body says when) so that no get hands its instance out."""
    if _string(item, "status") == IDLE:
        return None
    try:
        body = json.loads(_string(item, "body") or "")
    except ValueError:
        body = None
    lease = body if isinstance(body, dict) else {}
    lease = dict(lease, id=_entry_id(key))
    if entry_problems("lease", lease, lease=True):
        lease = {"id": lease["id"]}
    lease.setdefault("leased_at", isoformat(now))
    return lease


class DynamoStore(PoolStore):
    """One pool in a DynamoDB table (see the module docstring). `client` has boto3's DynamoDB methods (see above).

    `state_dir` is where the refill job's local things go (its log, its code copy): the user's state directory by
    default. `clock` (epoch seconds) and `retry_delay` exist for tests; `lease_seconds` is the refill lease's."""

    def __init__(self, client, table, pool_name, state_dir=None, clock=time.time, retry_delay=1.0,
                 lease_seconds=REFILL_LEASE_SECONDS):
        self.spec = StoreSpec.dynamodb(table, pool_name, state_dir)  # refuses a bad table or pool name first
        self.client = client
        self.table = table
        self.pool_name = pool_name
        self.location = "dynamodb table %s, pool %s" % (table, pool_name)
        self.directory = self.spec.state_dir
        self.clock = clock
        self.retry_delay = retry_delay
        self.lease_seconds = lease_seconds
        self.held_lease = None  # the _DynamoLease this store holds, if any: transactions are fenced by it

    # -- calls -----------------------------------------------------------------------------------------------------
    def _call(self, operation, **params):
        """One DynamoDB call, throttling retried (jittered, capped). A failed condition is not retried: it raises
        botocore's ClientError for the caller to decide; any other failure raises a PoolError naming the table."""
        method = getattr(self.client, "".join("_" + c.lower() if c.isupper() else c for c in operation)[1:])
        try:
            return self._attempts(method, params)
        except botocore_exceptions().ClientError as exc:
            code = _code(exc)
            if code in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                raise
            raise self._error(operation, exc, code) from exc
        except botocore_exceptions().BotoCoreError as exc:
            raise PoolError("DynamoDB %s on table %s failed: %s" % (operation, self.table, exc),
                            error_code=type(exc).__name__) from exc

    def _attempts(self, method, params):
        """method(**params) as AWSRetry.jittered_backoff(**retry.backoff_args(retry.CALLS, scale=retry_delay),
        catch_extra_error_codes=retry.DYNAMODB_THROTTLING_CODES) calls it: up to 4 attempts, random pauses of up to
        1, 2 and 4 retry_delays between them (as ec2.py). The first attempt is made before amazon.aws's retries module
        is imported (it imports botocore; retry.py says why the hand-out path avoids it): a call that succeeds loads
        neither, and one that is throttled goes on with AWSRetry's remaining 3 attempts after the pause AWSRetry
        would have made."""
        try:
            return method(**params)
        except botocore_exceptions().ClientError as exc:
            # pylint: disable=import-outside-toplevel
            from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry

            if not AWSRetry.found(_code(exc), retry.DYNAMODB_THROTTLING_CODES):
                raise
        time.sleep(retry.pause(1, random.random, retry.CALLS, scale=self.retry_delay))
        retried = AWSRetry.jittered_backoff(catch_extra_error_codes=retry.DYNAMODB_THROTTLING_CODES,
                                            **retry.backoff_args(retry.CALLS, scale=self.retry_delay, done=1))
        return retried(method)(**params)

    def _error(self, operation, exc, code):
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if code == "ResourceNotFoundException":
            return PoolError("DynamoDB table %s does not exist (%s: %s); ec2spot.pool.spot_pool_init creates it, or "
                             "create it with partition key pool (S) and sort key item (S)"
                             % (self.table, operation, message), error_code=code, table=self.table)
        if code in retry.DYNAMODB_DENIED_CODES:
            return PoolError("not allowed to use DynamoDB table %s: %s needs the IAM permission dynamodb:%s on it "
                             "(%s: %s)" % (self.table, operation, _ACTIONS.get(operation, operation), code, message),
                             error_code=code, table=self.table, permission="dynamodb:%s" % operation)
        return PoolError("DynamoDB %s on table %s failed: %s (%s)" % (operation, self.table, message, code),
                         error_code=code, table=self.table)

    def _key(self, item):
        return {"pool": _s(self.pool_name), "item": _s(item)}

    def _query(self):
        """Every item of the pool, strongly consistent, all pages: {item key: attributes}."""
        items, start = {}, None
        while True:
            params = {"TableName": self.table, "ConsistentRead": True,
                      "KeyConditionExpression": "#p = :p", "ExpressionAttributeNames": {"#p": "pool"},
                      "ExpressionAttributeValues": {":p": _s(self.pool_name)}}
            if start:
                params["ExclusiveStartKey"] = start
            answer = self._call("Query", **params)
            for item in answer.get("Items", []):
                items[item["item"]["S"]] = item
            start = answer.get("LastEvaluatedKey")
            if not start:
                return items

    # -- the table -------------------------------------------------------------------------------------------------
    def ensure_table(self, create=True, wait_seconds=300):
        """Check the table's shape; create it (on-demand billing) when missing and `create`, and wait until it is
        ACTIVE. Raises PoolError naming the table: missing with `create` off, another key schema, no permission."""
        table = self._describe_table()
        if table is None:
            if not create:
                raise self._missing_table()
            table = self._create_table()
        self._check_shape(table)
        deadline = time.monotonic() + wait_seconds
        while table.get("TableStatus") != "ACTIVE":
            if time.monotonic() >= deadline:
                raise PoolError("DynamoDB table %s is still %s after %d s"
                                % (self.table, table.get("TableStatus"), wait_seconds), table=self.table)
            time.sleep(1)
            table = self._call("DescribeTable", TableName=self.table)["Table"]
        return table

    def prepare(self, create=True, dry_run=False):
        """See PoolStore.prepare: the table (ensure_table). With `dry_run` only a DescribeTable: False when the
        table is missing and `create` would make it."""
        if not dry_run:
            self.ensure_table(create=create)
            return True
        table = self._describe_table()
        if table is None:
            if not create:
                raise self._missing_table()
            return False
        self._check_shape(table)
        return True

    def _describe_table(self):
        """The table's description, or None when it does not exist."""
        try:
            return self._call("DescribeTable", TableName=self.table)["Table"]
        except PoolError as exc:
            if exc.details.get("error_code") != "ResourceNotFoundException":
                raise
            return None

    def _missing_table(self):
        return PoolError("DynamoDB table %s does not exist, and create_table is off: create it (partition key "
                         "pool, sort key item, both strings) or let ec2spot.pool.spot_pool_init create it"
                         % self.table, error_code="ResourceNotFoundException", table=self.table)

    def _create_table(self):
        try:
            return self._call("CreateTable", TableName=self.table, BillingMode="PAY_PER_REQUEST",
                              KeySchema=KEY_SCHEMA,
                              AttributeDefinitions=[{"AttributeName": "pool", "AttributeType": "S"},
                                                    {"AttributeName": "item", "AttributeType": "S"}],
                              )["TableDescription"]
        except PoolError as exc:
            if exc.details.get("error_code") != "ResourceInUseException":
                raise
            return self._call("DescribeTable", TableName=self.table)["Table"]  # another controller made it

    def _check_shape(self, table):
        types = {item["AttributeName"]: item["AttributeType"] for item in table.get("AttributeDefinitions", [])}
        keys = [(item["AttributeName"], item["KeyType"]) for item in table.get("KeySchema", [])]
        if keys != [("pool", "HASH"), ("item", "RANGE")] or types.get("pool") != "S" or types.get("item") != "S":
            raise PoolError("DynamoDB table %s has another key schema (%s): a pool table has partition key pool "
                            "and sort key item, both strings; choose another dynamodb_table"
                            % (self.table, ", ".join("%s %s %s" % (name, kind, types.get(name, "?"))
                                                     for name, kind in keys)),
                            table=self.table, error_code="WrongKeySchema")

    # -- from items to a state and back ----------------------------------------------------------------------------
    def _assemble(self, items):
        """The state (domain/pool.py new_state()'s shape) of the pool's items, or None when there is no pool item. Raises
        DamagedPool (naming the table and the items) when any of the pool's own items is one the store does not
        understand, with or without a pool item: it is never read past, overwritten or deleted."""
        bodies, damage = read_items(items, self.pool_name)
        if damage:
            raise self._damaged(damage)
        if POOL_ITEM not in bodies:
            return None
        state = bodies[POOL_ITEM]
        listed = sorted((int(items[key]["pos"]["N"]), key) for key in bodies if key != POOL_ITEM)
        state["instances"] = [bodies[key] for _pos, key in listed if items[key]["status"]["S"] == IDLE]
        state["leases"] = [bodies[key] for _pos, key in listed if items[key]["status"]["S"] == LEASED]
        state.setdefault("refill", {})
        state.setdefault("cooldowns", [])
        state.setdefault("pending_launches", [])
        return state

    def _damaged(self, damage):
        shown = ["item %s: %s" % (key, "; ".join(problems[:3])) for key, problems in sorted(damage.items())[:5]]
        if len(damage) > 5:
            shown.append("and %d more" % (len(damage) - 5))
        return DamagedPool(
            "the pool's items in %s are damaged, so nothing reads past, changes or deletes them: %s. Nothing was "
            "changed. Repair the items by hand, or ec2spot.pool.spot_pool_init with rebuild: true rebuilds the pool "
            "from EC2 (every pool instance carries the tag ec2spot:pool=%s): it copies the pool's items to a file in "
            "the state directory first, and keeps leases, and any instance whose damaged item may be a lease, as "
            "leases." % (self.location, " | ".join(shown), self.pool_name),
            table=self.table, items=sorted(damage))

    @staticmethod
    def _wanted(state):
        """{item key: (status, body)} of the instance and lease items a state needs, in the state's order."""
        wanted = {}
        for entry in state["instances"]:
            wanted.setdefault(_instance_key(entry), (IDLE, entry))
        for lease in state["leases"]:
            key = _instance_key(lease)
            wanted[key if key not in wanted else _instance_key(lease, lease=True)] = (LEASED, lease)
        return wanted

    @staticmethod
    def _item_attributes(status, body, rev, pos):
        attributes = {"status": _s(status), "body": _s(_dump(body)), "rev": _n(rev), "pos": _n(pos)}
        if status == LEASED:
            if body.get("lease_id"):
                attributes["lease_id"] = _s(body["lease_id"])
            if _epoch(body.get("expires_at")) is not None:
                attributes["expires"] = _n(_epoch(body["expires_at"]))
        return attributes

    # -- the interface ---------------------------------------------------------------------------------------------
    def read(self):
        return self._assemble(self._query())

    def exists(self):
        answer = self._call("GetItem", TableName=self.table, Key=self._key(POOL_ITEM), ConsistentRead=True,
                            ProjectionExpression="#i", ExpressionAttributeNames={"#i": "item"})
        return "Item" in answer

    @contextlib.contextmanager
    def transaction(self):
        """Read the whole pool, let the caller change `tx.state`, then write only the items that differ, in one
        TransactWriteItems (chunks of 100 items beyond that, the pool item in the first), each conditioned on
        what was read: the pool item on its `version`, an instance item on its `rev` (or on not existing).

        A condition that fails (another controller changed the pool meanwhile, a get leased an entry this change
        touches) raises StoreConflict and writes nothing: the caller reads again and redoes its change (a block
        cannot be replayed here). With the refill lease held through this store, every write is also conditioned
        on still holding it: RefillLeaseLost when it is lost."""
        items = self._query()
        before = self._assemble(items)
        text = None if before is None else _dump(before)
        tx = Transaction(None if before is None else json.loads(text))
        yield tx
        if tx.discarded:
            return
        if tx.deleted:
            if before is not None:
                self._write(self._deletions(items))
            return
        if tx.state is None or (text is not None and _dump(tx.state) == text):
            return
        self._write(self._changes(items, tx.state))

    def _deletions(self, items):
        """Deletes of the pool's own items among `items`, each conditioned on being as read (_unchanged)."""
        return [{"Delete": dict(self._unchanged(key, item), TableName=self.table, Key=self._key(key))}
                for key, item in items.items() if _is_own(key)]

    @staticmethod
    def _unchanged(key, item):
        """The condition that an item is as it was read: its version (the pool item) or rev, and its body, each
        equal to what was read, or still missing (a damaged item may lack them)."""
        names, values, parts = {}, {}, []
        for index, name in enumerate(("version" if key == POOL_ITEM else "rev", "body")):
            names["#u%d" % index] = name
            if name in item:
                values[":u%d" % index] = item[name]
                parts.append("#u%d = :u%d" % (index, index))
            else:
                parts.append("attribute_not_exists(#u%d)" % index)
        condition = {"ConditionExpression": " AND ".join(parts), "ExpressionAttributeNames": names}
        if values:
            condition["ExpressionAttributeValues"] = values
        return condition

    def _changes(self, items, state):
        """The TransactWriteItems entries that turn `items` into `state`, the pool item's first."""
        body = {key: value for key, value in state.items() if key not in ("instances", "leases")}
        pool = items.get(POOL_ITEM)
        if pool is None:
            writes = [{"Put": {"TableName": self.table, "ConditionExpression": "attribute_not_exists(#i)",
                               "ExpressionAttributeNames": {"#i": "item"},
                               "Item": dict(self._key(POOL_ITEM), body=_s(_dump(body)), version=_n(1))}}]
        else:
            writes = [{"Update": {"TableName": self.table, "Key": self._key(POOL_ITEM),
                                  "UpdateExpression": "SET #b = :b, #v = :next", "ConditionExpression": "#v = :v",
                                  "ExpressionAttributeNames": {"#b": "body", "#v": "version"},
                                  "ExpressionAttributeValues": {":b": _s(_dump(body)), ":v": pool["version"],
                                                                ":next": _n(int(pool["version"]["N"]) + 1)}}}]
        old = {key: item for key, item in items.items() if key.startswith(ENTRY_PREFIXES)}
        top = max([int(item["pos"]["N"]) for item in old.values()] or [0])
        for key, (status, entry) in self._wanted(state).items():
            item = old.pop(key, None)
            if item is None:
                top += 1
                writes.append({"Put": {"TableName": self.table, "ConditionExpression": "attribute_not_exists(#i)",
                                       "ExpressionAttributeNames": {"#i": "item"},
                                       "Item": dict(self._key(key), **self._item_attributes(status, entry, 1, top))}})
            elif (item["status"]["S"], json.loads(item["body"]["S"])) != (status, entry):
                attributes = self._item_attributes(status, entry, int(item["rev"]["N"]) + 1, int(item["pos"]["N"]))
                writes.append({"Put": {"TableName": self.table, "ConditionExpression": "#r = :r",
                                       "ExpressionAttributeNames": {"#r": "rev"},
                                       "ExpressionAttributeValues": {":r": item["rev"]},
                                       "Item": dict(self._key(key), **attributes)}})
        for key, item in old.items():  # no longer in the state
            writes.append({"Delete": {"TableName": self.table, "Key": self._key(key), "ConditionExpression": "#r = :r",
                                      "ExpressionAttributeNames": {"#r": "rev"},
                                      "ExpressionAttributeValues": {":r": item["rev"]}}})
        return writes

    def _fence(self):
        """The condition that this store still holds its refill lease (None when it holds none)."""
        lease = self.held_lease
        if lease is None or not lease.held:
            return None
        return {"ConditionCheck": {"TableName": self.table, "Key": self._key(LEASE_ITEM),
                                   "ConditionExpression": "#h = :h AND #f = :f",
                                   "ExpressionAttributeNames": {"#h": "holder", "#f": "fencing"},
                                   "ExpressionAttributeValues": {":h": _s(lease.holder), ":f": _n(lease.fencing)}}}

    def _write(self, writes):
        fence = self._fence()
        room = TRANSACTION_LIMIT - (1 if fence else 0)
        for start in range(0, len(writes), room):
            self._transact(writes[start:start + room] + ([fence] if fence else []), fence)

    def _transact(self, chunk, fence):
        """One TransactWriteItems. A cancellation only for passing reasons (throttled, or another transaction on
        one of the items at that moment) is retried as throttled calls are (the conditions still guard every
        item); a failed condition never is."""
        for attempt in range(1, retry.CALLS.attempts + 1):
            try:
                self._call("TransactWriteItems", TransactItems=chunk)
                return
            except botocore_exceptions().ClientError as exc:
                reasons = [reason.get("Code") for reason in exc.response.get("CancellationReasons", [])]
                failed = set(reason for reason in reasons if reason and reason != "None")
                if failed and failed <= retry.TRANSACTION_PASSING_REASONS and attempt < retry.CALLS.attempts:
                    time.sleep(retry.pause(attempt, random.random, retry.CALLS, scale=self.retry_delay))
                    continue
                if fence and len(reasons) == len(chunk) and reasons[-1] == "ConditionalCheckFailed":
                    raise RefillLeaseLost("the refill lease of %s was taken over by another controller (fencing "
                                          "number above %d): nothing was written"
                                          % (self.location, self.held_lease.fencing), table=self.table) from exc
                if failed - {"ConditionalCheckFailed", retry.TRANSACTION_CONFLICT}:
                    raise self._error("TransactWriteItems", exc, ",".join(sorted(failed))) from exc
                raise StoreConflict("%s changed while this change was made (another controller wrote meanwhile): "
                                    "nothing was written; run again" % self.location, table=self.table) from exc

    def claim_ready(self, dead, alive, lease_ttl, verify=True, verify_max_age=0, check_mode=False):
        """See PoolStore.claim_ready: one strongly consistent Query, then one conditional UpdateItem of one ready
        instance item (idle -> leased, condition: unchanged since the read), picked at random among the ready ones
        so that racing controllers rarely collide. A lost race takes another one of the same read; only after
        LOSSES_BEFORE_REREAD lost races in a row (the read is stale: the pool is being emptied by others) is the
        pool read again, at most MAX_READS times in all; the last read is tried to its end. Dead entries are deleted (condition: still idle); check
        mode writes nothing."""
        items = self._query()
        state = self._assemble(items)
        if state is None:
            return None
        now = utcnow()
        trusted = not needs_verify(state, verify, verify_max_age, now)
        dropped = choose_claim(state, dead, alive, trusted)[0]
        if not check_mode:
            for instance_id in dropped:
                with _unless_client_error():  # leased or gone meanwhile
                    self._call("DeleteItem", TableName=self.table, Key=self._key(INSTANCE_PREFIX + instance_id),
                               ConditionExpression="#s = :idle", ExpressionAttributeNames={"#s": "status"},
                               ExpressionAttributeValues={":idle": _s(IDLE)})
        for reads in range(1, MAX_READS + 1):
            # The last read is tried to its end: a claim never gives up while its read shows a ready entry.
            patience = LOSSES_BEFORE_REREAD if reads < MAX_READS else None
            lease, stale = self._claim_from(items, state, dead, alive, trusted, now, lease_ttl, check_mode, patience)
            if lease is not None or not stale or reads == MAX_READS:
                break
            items = self._query()
            state = self._assemble(items)
            if state is None:  # deleted meanwhile
                return None
        unchecked = [] if lease else choose_claim(state, set(), alive, trusted)[2]
        return Claim(lease, counts(state), (state.get("refill") or {}).get("last_error"), dropped, unchecked)

    def _claim_from(self, items, state, dead, alive, trusted, now, lease_ttl, check_mode, patience):
        """Lease one eligible entry of one read (`items`, `state`); returns (lease or None, whether the read proved
        stale: `patience` races lost in a row, None: no limit). `state` is brought up to what was learnt: the lease
        made, the entries others leased first."""
        state["instances"] = [entry for entry in state["instances"] if entry["id"] not in dead]
        order = list(state["instances"])
        random.shuffle(order)  # choose_claim takes the first eligible: of a shuffled list, any eligible one
        top = max([int(item["pos"]["N"]) for key, item in items.items() if key.startswith(ENTRY_PREFIXES)] or [0])
        lost = 0
        while True:
            entry = choose_claim(dict(state, instances=order), set(), alive, trusted)[1]
            if entry is None:
                return None, False
            if patience is not None and lost >= patience:
                return None, True
            lease = new_lease(entry, now, lease_ttl)
            won = check_mode or self._lease(items[INSTANCE_PREFIX + entry["id"]], lease, top + 1)
            order.remove(entry)
            state["instances"].remove(entry)
            state["leases"].append(lease if won else entry)  # a lost one: leased by someone else
            if won:
                return lease, False
            lost += 1

    def _lease(self, item, lease, pos):
        """The one conditional write of a hand-out; False when another controller changed the item first."""
        attributes = self._item_attributes(LEASED, lease, int(item["rev"]["N"]) + 1, pos)
        names = {"#%s" % name: name for name in attributes}
        values = {":%s" % name: value for name, value in attributes.items()}
        try:
            self._call("UpdateItem", TableName=self.table, Key=self._key(item["item"]["S"]),
                       UpdateExpression="SET " + ", ".join("#%s = :%s" % (name, name) for name in attributes),
                       ConditionExpression="#rev = :old AND #status = :idle", ExpressionAttributeNames=names,
                       ExpressionAttributeValues=dict(values, **{":old": item["rev"], ":idle": _s(IDLE)}))
            return True
        except botocore_exceptions().ClientError:  # ConditionalCheckFailedException: _call raises no other
            return False

    def end_lease(self, instance_id, lease_id):
        """See PoolStore.end_lease: a DeleteItem of that lease's item, conditioned on its lease_id."""
        condition = "#s = :leased AND " + ("#l = :l" if lease_id else "attribute_not_exists(#l)")
        values = {":leased": _s(LEASED)}
        if lease_id:
            values[":l"] = _s(lease_id)
        for key in (INSTANCE_PREFIX + instance_id, _instance_key({"id": instance_id, "lease_id": lease_id}, True)):
            try:
                self._call("DeleteItem", TableName=self.table, Key=self._key(key), ConditionExpression=condition,
                           ExpressionAttributeNames={"#s": "status", "#l": "lease_id"},
                           ExpressionAttributeValues=values)
                break
            except botocore_exceptions().ClientError:
                continue  # not this item's lease
        state = self.read()
        return None if state is None else counts(state)

    def delete(self, refill_lock=None):
        """Delete every item of the pool (the refill lease too, unless another job holds it) and the local log.
        Items of the pool's partition that are not the pool's own, or that it does not understand, are never
        deleted: returned are the warnings that name them."""
        for _attempt in range(5):
            items = self._query()
            damage = read_items(items, self.pool_name)[1]
            doomed = {key: item for key, item in items.items() if _is_own(key) and key not in damage}
            if not doomed:
                break
            with contextlib.suppress(StoreConflict):
                self._write(self._deletions(doomed))
        self.remove_refill_lock(refill_lock)
        for path in (self.refill_log_path(), self.refill_log_path() + ".1"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        left = sorted(key for key in items if key != LEASE_ITEM and key not in doomed)
        if not left:
            return []
        return ["items left in %s, as they are %s (the store never deletes those): %s. Delete them by hand once "
                "nothing needs them (aws dynamodb delete-item --table-name %s --key '{\"pool\": {\"S\": \"%s\"}, "
                "\"item\": {\"S\": \"<item>\"}}')"
                % (self.location, "damaged or not the pool's own" if damage else "not the pool's own",
                   ", ".join(left), self.table, self.pool_name)]

    def move_aside(self, allow_foreign=False):  # pylint: disable=unused-argument
        """For a rebuild (FileStore.move_aside's counterpart; every item here is the pool's: `allow_foreign` changes
        nothing): copy the pool's own items, as they are, to a private file in the state directory (returned; None
        when nothing is damaged, by now), then take the damaged ones out of the pool's way, each on condition that
        it is as read and copied (StoreConflict otherwise: run again). A damaged instance item that says it is
        idle is deleted (the rebuild finds its instance by its tags); any other (leased, or a status not
        understood) may be a job's lease, so it becomes a lease of its instance (what of its body can be read is
        kept), never handed out until released: the rebuild keeps it while EC2 says the instance runs."""
        items = self._query()
        damage = read_items(items, self.pool_name)[1]
        if not damage:
            return None
        path = self._copy_aside({key: item for key, item in items.items() if _is_own(key)})
        top = max([_number(item, "pos") or 0 for key, item in items.items() if key.startswith(ENTRY_PREFIXES)] or [0])
        writes = []
        for key in sorted(damage):
            item = items[key]
            lease = None if key == POOL_ITEM else _salvaged_lease(key, item, utcnow())
            if lease is None:
                writes.append({"Delete": dict(self._unchanged(key, item), TableName=self.table, Key=self._key(key))})
                continue
            top += 1
            attributes = self._item_attributes(LEASED, lease, (_number(item, "rev") or 0) + 1,
                                               _number(item, "pos") or top)
            writes.append({"Put": dict(self._unchanged(key, item), TableName=self.table,
                                       Item=dict(self._key(key), **attributes))})
        self._write(writes)
        return path

    def _copy_aside(self, items):
        """Write `items` (DynamoDB JSON, as read) to a new private file in the state directory; its path."""
        make_private_directory(self.directory)
        check_state_directory(self.directory)
        base = os.path.join(self.directory, "dynamodb-%s-%s.corrupt-%s" % (
            self.table, self.pool_name, utcnow().strftime("%Y%m%dT%H%M%SZ")))
        path, number = base + ".json", 1
        while os.path.lexists(path):  # never over an earlier one
            number += 1
            path = "%s-%d.json" % (base, number)
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"table": self.table, "pool": self.pool_name, "items": [items[key] for key in sorted(items)]},
                      handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        return path

    # -- the refill job's lease and local files --------------------------------------------------------------------
    def refill_lock(self):
        return _DynamoLease(self)

    def refill_log_path(self):
        return os.path.join(self.directory, "dynamodb-%s-%s.refill.log" % (self.table, self.pool_name))

    def code_directory(self):
        # The pool lives in the table: a controller that never ran init for it still starts its refill job, so the
        # (private) state directory is made here when missing.
        make_private_directory(self.directory)
        check_state_directory(self.directory)
        path = os.path.join(self.directory, "code")
        if os.path.lexists(path):
            check_code_directory(path)
        return path

    def code_directory_shared(self):
        return True  # other pools of the table may run a job from this controller: the code copy stays


class _DynamoLease(RefillLease):
    """The refill lease: the pool's `refill-lease` item (holder, expires, fencing, stop), with FileLock's API.

    Held while `holder` is ours and `expires` (epoch seconds, the caller's clock) is ahead; once it has passed,
    any controller may take it, and taking it increments `fencing`. A released lease keeps its item (and its
    fencing number, so numbers only grow); remove() deletes it. renew() extends a held lease (the job calls it
    while it works); it fails once another controller has taken the lease.

    A stop request is how a controller stops a refill job that runs on another machine, where no signal of its
    reaches: request_stop() writes `stop` on the item (who asks, when, and the holder's `expires` then) without
    taking the lease; the holder's next renew() returns it (the same UpdateItem: no extra request), and the job then
    stops as on SIGTERM and releases the lease. acquire_stopping() asks and waits for that. The holder renewed after
    the request (its `expires` moved past the one recorded) is the proof it saw it: stop_report() tells a holder
    that is finishing from one that does not answer (dead with its controller). Every acquisition removes `stop`,
    so a request never stops a job started after it."""

    def __init__(self, store):
        self.store = store
        self.holder = "%s:%d:%s" % (socket.gethostname(), os.getpid(), os.urandom(8).hex())
        self.fencing = None
        self.seen = None  # the item as last read (last_exit(cached=True) reuses it: get's start already read it)

    @property
    def held(self):
        return self.fencing is not None

    def _item(self):
        store = self.store
        self.seen = store._call("GetItem", TableName=store.table, Key=store._key(LEASE_ITEM),
                                ConsistentRead=True).get("Item")
        return self.seen

    def exists(self):
        return self._item() is not None

    def holder_elsewhere(self):
        """Who else holds the lease, as messages show it ("host:pid until <time>"), or None."""
        item = None if self.held else self._item()
        if not item or "holder" not in item or item["holder"]["S"] == self.holder:
            return None
        until = float(item["expires"]["N"])
        if until <= self.store.clock():
            return None
        who = item["holder"]["S"].rsplit(":", 1)[0]  # the random part says nothing to a reader
        return "%s until %s (epoch %d)" % (who, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)), until)

    def is_held_elsewhere(self):
        return not self.held and _held_by_other(self._item(), self.holder, self.store.clock())

    def acquire(self, blocking=True, timeout=None, create=True):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._take(create):
                return True
            if not create and not self.exists():
                return False
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(1)

    def _take(self, create):
        store = self.store
        now = store.clock()
        free = "attribute_not_exists(#h) OR #e < :now"
        condition = "attribute_not_exists(#i) OR " + free if create else "attribute_exists(#i) AND (%s)" % free
        try:
            # REMOVE #s: a stop request was meant for the holder before this one.
            answer = store._call(
                "UpdateItem", TableName=store.table, Key=store._key(LEASE_ITEM),
                UpdateExpression="SET #h = :me, #e = :exp, #f = if_not_exists(#f, :zero) + :one, #l = :log "
                                 "REMOVE #s",
                ConditionExpression=condition, ReturnValues="ALL_NEW",
                ExpressionAttributeNames={"#h": "holder", "#e": "expires", "#f": "fencing", "#i": "item",
                                          "#s": "stop", "#l": "log"},
                ExpressionAttributeValues={":me": _s(self.holder), ":exp": _n(now + store.lease_seconds),
                                           ":now": _n(now), ":zero": _n(0), ":one": _n(1),
                                           ":log": _s(store.refill_log_path())})
        except botocore_exceptions().ClientError:
            return False
        self.fencing = int(answer["Attributes"]["fencing"]["N"])
        store.held_lease = self
        return True

    def _mine(self):
        return {"ConditionExpression": "#h = :me AND #f = :f",
                "ExpressionAttributeValues": {":me": _s(self.holder), ":f": _n(self.fencing)}}

    def renew(self):
        """Extend the held lease by the store's lease_seconds; raises RefillLeaseLost when it is no longer ours.

        Returns the stop request another controller made (request_stop: {"by": "host:pid", "at": epoch seconds}),
        or None: the item comes back with the same UpdateItem (ReturnValues), so listening costs no request."""
        store = self.store
        if not self.held:
            raise RefillLeaseLost("the refill lease of %s is not held here: acquire it first" % store.location,
                                  table=store.table)
        mine = self._mine()
        try:
            answer = store._call(
                "UpdateItem", TableName=store.table, Key=store._key(LEASE_ITEM),
                UpdateExpression="SET #e = :exp", ConditionExpression=mine["ConditionExpression"],
                ReturnValues="ALL_NEW", ExpressionAttributeNames={"#h": "holder", "#f": "fencing", "#e": "expires"},
                ExpressionAttributeValues=dict(mine["ExpressionAttributeValues"],
                                               **{":exp": _n(store.clock() + store.lease_seconds)}))
        except botocore_exceptions().ClientError as exc:
            self._forget()
            raise RefillLeaseLost("the refill lease of %s was taken over by another controller" % store.location,
                                  table=store.table) from exc
        return _stop_request((answer.get("Attributes") or {}).get("stop"))

    def request_stop(self):
        """Ask the controller that holds the lease (a refill job there) to stop, without taking the lease: `stop`
        is written on the item, conditioned on the holder and expiry just read (the first request for a holder
        stands). Returns the lease item as it is then, or None when nobody else holds a live lease."""
        store = self.store
        item = self._item()
        if not _held_by_other(item, self.holder, store.clock()):
            return None
        if "stop" in item:
            return item  # asked already (by us or another controller)
        request = {"by": _s(self.holder.rsplit(":", 1)[0]), "at": _n(int(store.clock())), "expires": item["expires"]}
        try:
            answer = store._call(
                "UpdateItem", TableName=store.table, Key=store._key(LEASE_ITEM), UpdateExpression="SET #s = :stop",
                ConditionExpression="#h = :holder AND #f = :f AND #e = :exp AND attribute_not_exists(#s)",
                ReturnValues="ALL_NEW",
                ExpressionAttributeNames={"#h": "holder", "#f": "fencing", "#e": "expires", "#s": "stop"},
                ExpressionAttributeValues={":holder": item["holder"], ":f": item["fencing"],
                                           ":exp": item["expires"], ":stop": {"M": request}})
        except botocore_exceptions().ClientError:
            return self._item()  # renewed, released or taken meanwhile: the caller looks again
        return answer["Attributes"]

    def acquire_stopping(self, timeout, create=True):
        """Take the lease, asking whoever holds it to stop first (request_stop): True once taken, False when
        `timeout` seconds passed first (or, without `create`, when there is no lease item). Asked again when the
        lease changed hands meanwhile (a get started a new job between the release and our take)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._take(create):
                return True
            if not create and not self.exists():
                return False
            self.request_stop()
            if time.monotonic() >= deadline:
                return False
            time.sleep(1)

    def stop_report(self):
        """The stop request on a lease held elsewhere, as messages need it, or None (free, expired, no request):
        {"holder": "host:pid", "until": epoch s, "asked_at": epoch s (the asker's clock), "answered": whether the
        holder renewed the lease since it was asked (so it saw the request, and runs)}."""
        item = self._item()
        if not _held_by_other(item, self.holder, self.store.clock()) or "stop" not in item:
            return None
        request = item["stop"]["M"]
        return {"holder": item["holder"]["S"].rsplit(":", 1)[0], "until": float(item["expires"]["N"]),
                "asked_at": float(request["at"]["N"]),
                "answered": float(item["expires"]["N"]) > float(request["expires"]["N"])}

    def last_exit(self, cached=False):
        """How the last holder's run ended, when it says more than the pool's own record can (see exit_of()):
        {"by": "host:pid", "at": epoch s, "log": its log on that host, "error": why it stopped, or None, and
        "error_code", "released": False when it died holding the lease}, or None (running, or ended cleanly).
        With `cached`, from the item as last read, if it was read (no request)."""
        item = self.seen if cached and self.seen is not None else None if self.held else self._item()
        return exit_of(item, self.store.clock(), socket.gethostname(), _pid_alive)

    def release(self, exit_error=None, exit_code=None):
        """Give the lease up, recording on its item how the holder's run ended (`exit`: who, when, and
        `exit_error` with its `exit_code`, the reason a job could not record in the pool itself: see last_exit()). A lease of a pool
        that no longer exists (a job that started after a terminate, an init that failed before it made the pool)
        is deleted instead of kept: nothing of a terminated pool stays in the table."""
        if not self.held:
            return
        store = self.store
        mine = self._mine()
        fencing = self.fencing
        record = {"by": _s(self.holder.rsplit(":", 1)[0]), "at": _n(int(store.clock()))}
        if exit_error:
            record.update(error=_s(exit_error), code=_s(exit_code or "Unknown"), log=_s(store.refill_log_path()))
        released = False
        with _unless_client_error():  # lost meanwhile: nothing of ours to release
            store._call("UpdateItem", TableName=store.table, Key=store._key(LEASE_ITEM),
                        UpdateExpression="REMOVE #h, #s SET #e = :zero, #x = :exit",
                        ConditionExpression=mine["ConditionExpression"],
                        ExpressionAttributeNames={"#h": "holder", "#f": "fencing", "#e": "expires", "#s": "stop",
                                                  "#x": "exit"},
                        ExpressionAttributeValues=dict(mine["ExpressionAttributeValues"],
                                                       **{":zero": _n(0), ":exit": {"M": record}}))
            released = True
        self._forget()
        if released and not store.exists():
            self._delete_unused(fencing)

    def _delete_unused(self, fencing):
        """Delete the lease item we released (number `fencing`) of a pool that does not exist. Whoever made or
        makes the pool holds the lease meanwhile (init, rebuild): an item taken since (a holder, another number)
        is theirs and stays."""
        store = self.store
        with _unless_client_error():
            store._call("DeleteItem", TableName=store.table, Key=store._key(LEASE_ITEM),
                        ConditionExpression="attribute_not_exists(#h) AND #f = :f",
                        ExpressionAttributeNames={"#h": "holder", "#f": "fencing"},
                        ExpressionAttributeValues={":f": _n(fencing)})

    def remove(self):
        if self.held:
            store = self.store
            mine = self._mine()
            with _unless_client_error():
                store._call("DeleteItem", TableName=store.table, Key=store._key(LEASE_ITEM),
                            ConditionExpression=mine["ConditionExpression"],
                            ExpressionAttributeNames={"#h": "holder", "#f": "fencing"},
                            ExpressionAttributeValues=mine["ExpressionAttributeValues"])
        self._forget()

    def _forget(self):
        self.fencing = None
        if self.store.held_lease is self:
            self.store.held_lease = None


def _held_by_other(item, holder, now):
    """Whether the lease item `item` is held by someone other than `holder`, unexpired at `now`."""
    return (item is not None and "holder" in item and item["holder"]["S"] != holder
            and float(item["expires"]["N"]) > now)


def _stop_request(attribute):
    """A lease item's `stop` attribute as renew() returns it: {"by", "at"}, or None."""
    if not attribute:
        return None
    request = attribute["M"]
    return {"by": request["by"]["S"], "at": float(request["at"]["N"])}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_of(item, now, here, alive):
    """How the last holder of the lease item `item` ended its run, as last_exit() returns it (pure: `now` in
    epoch seconds, `here` this host's name, `alive(pid)` whether a process of this host runs).

    A holder that released the lease with an `error` (a job that could not write its reason to the pool: the
    permission is missing) left it in the item's `exit`; one that still holds it but is dead (its lease expired
    unrenewed, or it ran on this host and its process is gone: killed) recorded nothing. None otherwise: a live
    holder, a clean release, no item."""
    if not item:
        return None
    if "holder" in item:
        by = item["holder"]["S"].rsplit(":", 1)[0]
        host, _sep, pid = by.rpartition(":")
        expired = float(item["expires"]["N"]) <= now
        if not expired and not (host == here and pid.isdigit() and not alive(int(pid))):
            return None
        log = item.get("log", {}).get("S")
        return {"by": by, "at": float(item["expires"]["N"]), "log": log, "error": None, "error_code": None,
                "released": False}
    record = (item.get("exit") or {}).get("M") or {}
    if "error" not in record:
        return None
    return {"by": record["by"]["S"], "at": float(record["at"]["N"]), "log": record.get("log", {}).get("S"),
            "error": record["error"]["S"], "error_code": record.get("code", {}).get("S"), "released": True}
