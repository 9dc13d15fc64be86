# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: pool
short_description: The instances of an ec2spot.pool warm pool as inventory
version_added: 0.1.0
description:
  - Lists the instances of one pool of the C(ec2spot.pool) collection, read from the pool's state file (the
    file M(ec2spot.pool.spot_pool_init) and M(ec2spot.pool.spot_pool_get) keep on the controller), or with
    O(store=dynamodb) from the pool's items in the DynamoDB table O(dynamodb_table) (one strongly consistent
    read; needs a region and credentials, the usual amazon.aws options and environment variables, and the IAM
    permission C(dynamodb:Query) on the table), so a play can run on the instances a job was handed, for example
    the role P(ec2spot.pool.drain_worker#role).
  - Optionally also asks EC2 (one DescribeInstances call filtered by the tag C(ec2spot:pool=<pool_name>)). Then
    only instances that EC2 reports as C(running) are listed, with their current addresses, and tagged instances
    the state file does not know about are added if they carry the pool's id (C(ec2spot:pool-id), from the
    state file), never those of another pool that uses the same name. Without a state file, every running instance
    tagged with the name is listed.
  - Every host is named by its instance id. C(ansible_host) is its public or private address (O(address));
    instances without that address yet (still launching) are left out unless O(include_pending) is set.
  - "Groups (prefixed with O(group_prefix)): C(pool_<pool_name>) with every instance; C(spot) and C(fallback) by
    how the instance was bought; C(leased) (handed out by M(ec2spot.pool.spot_pool_get)) and C(ready) (in the
    pool, not handed out). Names are made safe for Ansible (C(-) and C(.) become C(_))."
  - The inventory file must end with C(pool.yml) or C(pool.yaml), for example C(ci.pool.yml).
  - An unknown pool (no state file or no pool in the table, and no tagged instance when O(use_tags) is on) is an
    error that names the file or table looked for.
author:
  - ec2spot.pool contributors (!UNKNOWN)
extends_documentation_fragment:
  - constructed
  - ec2spot.pool.pool
  - amazon.aws.boto3
  - amazon.aws.common.plugins
  - amazon.aws.region.plugins
  - amazon.aws.assume_role.plugins
options:
  plugin:
    description: Marks the file as a configuration of this plugin.
    type: str
    required: true
    choices: [ec2spot.pool.pool]
  address:
    description:
      - Which address becomes C(ansible_host). V(public) is the address the pool hands out by default (C(ip)
        in the state file); V(private) suits a controller inside the VPC.
    type: str
    choices: [public, private]
    default: public
  use_tags:
    description:
      - Also ask EC2 for the instances tagged C(ec2spot:pool=<pool_name>) (DescribeInstances). Needs credentials
        and a region (the usual amazon.aws options and environment variables).
      - Instances that are no longer running are then left out even when the state file still lists them.
    type: bool
    default: false
  include_pending:
    description:
      - Also list instances that have no address of the O(address) kind yet, without C(ansible_host), in the
        group C(pending).
    type: bool
    default: false
  group_prefix:
    description: Prefix of every group this plugin makes, so they do not collide with groups of other sources.
    type: str
    default: ec2spot_
"""

EXAMPLES = r"""
---
# ci.pool.yml: the instances of the pool 'ci', reached on their public addresses.
plugin: ec2spot.pool.pool
pool_name: ci

---
# ci-live.pool.yml: the same pool as EC2 sees it now, private addresses, grouped by zone as well.
plugin: ec2spot.pool.pool
pool_name: ci
use_tags: true
region: eu-west-1
address: private
keyed_groups:
  - key: ec2spot_availability_zone
    prefix: az

---
# shared.pool.yml: a pool that several controllers share through DynamoDB (store=dynamodb on the modules too).
plugin: ec2spot.pool.pool
pool_name: ci
store: dynamodb
dynamodb_table: ec2spot-pool
region: eu-west-1

# Run the worker role on the instances a job leased:
#   ansible-playbook -i ci.pool.yml ec2spot.pool.deploy_worker
"""

import os

from ansible.errors import AnsibleParserError
from ansible.inventory.group import to_safe_group_name
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin

from ansible_collections.amazon.aws.plugins.plugin_utils.inventory import AWSInventoryBase
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import identity
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import BOTOCORE_CONFIG
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.spec import LOCATION_OPTIONS
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.spec import check_location_options

POOL_TAG = "ec2spot:pool"
TYPE_TAG = "ec2spot:type"
# Host variables copied from a state file entry (name in the file -> variable).
ENTRY_VARS = (
    ("id", "ec2spot_instance_id"),
    ("type", "ec2spot_type"),
    ("availability_zone", "ec2spot_availability_zone"),
    ("instance_type", "ec2spot_instance_type"),
    ("launched_at", "ec2spot_launched_at"),
    ("leased_at", "ec2spot_leased_at"),
    ("expires_at", "ec2spot_lease_expires_at"),
)


def pool_hosts(state, tagged=None):
    """Host records of a pool: the state file's entries (pool and leases), reconciled with EC2 when asked.

    `tagged` is None when EC2 was not asked, else the running tagged instances as dicts with id, public_ip,
    private_ip, type, availability_zone, instance_type. Each record: the entry's fields plus `leased`.
    """
    records = {}
    for entry in (state or {}).get("instances", []):
        records[entry["id"]] = dict(entry, leased=False)
    for entry in (state or {}).get("leases", []):
        records[entry["id"]] = dict(entry, leased=True)
    if tagged is None:
        return list(records.values())

    live = {}
    for instance in tagged:
        record = records.get(instance["id"], {"id": instance["id"], "leased": False, "type": instance.get("type")})
        record = dict(record)
        # EC2 is the fresher source for where the instance is now.
        record["ip"] = instance.get("public_ip")
        record["private_ip"] = instance.get("private_ip")
        for key in ("availability_zone", "instance_type"):
            if instance.get(key):
                record[key] = instance[key]
        record["state"] = instance.get("state")
        record.setdefault("type", instance.get("type"))
        live[instance["id"]] = record
    # Keep the state file's order, then what only the tags know.
    ordered = [live.pop(key) for key in list(records) if key in live]
    return ordered + sorted(live.values(), key=lambda record: record["id"])


class InventoryModule(AWSInventoryBase):
    NAME = "ec2spot.pool.pool"
    INVENTORY_FILE_SUFFIXES = ("pool.yml", "pool.yaml")

    def parse(self, inventory, loader, path, cache=True):
        # Not AWSInventoryBase.parse: that one demands boto3 and credentials, which reading the local state file
        # does not need. They are required only when EC2 is asked (use_tags).
        BaseInventoryPlugin.parse(self, inventory, loader, path, cache=cache)
        config = self._read_config_data(path)

        pool_name = self.get_option("pool_name")
        try:
            # As written in the source: get_option() has already made an empty `path` option a directory.
            check_location_options({option[0]: config.get(option[0]) for option in LOCATION_OPTIONS})
            store = self._store(pool_name)
            state_path = store.location
            if self.get_option("store") == "dynamodb":
                state = store.read()
            else:
                # Checked before reading: reading takes the lock, which would create the directory and a lock file
                # for a pool that does not exist.
                state = store.read() if store.exists() else None
        except PoolError as exc:
            raise AnsibleParserError("ec2spot.pool.pool: %s" % exc.message)

        tagged = None
        if self.get_option("use_tags"):
            tagged = self._tagged_instances(pool_name, state)
            if state is None and not tagged:
                raise AnsibleParserError(
                    "ec2spot.pool.pool: pool '%s' is unknown: there is no state file %s and no running instance "
                    "tagged %s=%s in region %s" % (pool_name, state_path, POOL_TAG, pool_name, self.region))
        elif state is None and self.get_option("store") == "dynamodb":
            raise AnsibleParserError(
                "ec2spot.pool.pool: pool '%s' is unknown: it is not in %s (create the pool with "
                "ec2spot.pool.spot_pool_init store=dynamodb, or set dynamodb_table and region to where it lives)"
                % (pool_name, state_path))
        elif state is None:
            raise AnsibleParserError(
                "ec2spot.pool.pool: pool '%s' is unknown: there is no state file %s (create the pool with "
                "ec2spot.pool.spot_pool_init, or set state_dir/pool_file to where it lives)" % (pool_name, state_path))

        self._populate(pool_name, pool_hosts(state, tagged))

    def _store(self, pool_name):
        """The pool's store, opened as the modules open theirs (common.pool_store, from the same options); with
        store=dynamodb on a client made from the plugin's connection options (as amazon.aws inventory plugins make
        theirs), once the options are checked."""
        params = {"pool_name": pool_name, "store": self.get_option("store"),
                  "dynamodb_table": self.get_option("dynamodb_table"), "state_dir": self.get_option("state_dir"),
                  "pool_file": self.get_option("pool_file")}
        if self.get_option("store") != "dynamodb":
            return pool_store(params)
        self.require_aws_sdk()
        self._set_frozen_credentials()
        return pool_store(params, lambda: self.client("dynamodb", config=BOTOCORE_CONFIG), self.region)

    def _tagged_instances(self, pool_name, state):
        self.require_aws_sdk()
        self._set_frozen_credentials()
        # Imported here: it needs botocore, which only this path requires.
        from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import ec2  # pylint: disable=import-outside-toplevel

        try:
            instances = ec2.describe_pool_instances(self.client("ec2"), pool_name, states=("running",))
        except PoolError as exc:
            raise AnsibleParserError("ec2spot.pool.pool: %s" % exc.message)
        summaries = [ec2.instance_summary(instance) for instance in instances]
        if state is not None:
            # Only this pool's: another controller's pool of the same name carries another pool id.
            listed = [entry["id"] for entry in state["instances"] + state["leases"]]
            summaries = identity.mine(summaries, pool_name, state.get("pool_id"), listed)
        result = []
        for summary in summaries:
            tag_type = summary["tags"].get(TYPE_TAG)
            result.append(dict(summary, type=tag_type or ("spot" if summary["lifecycle"] == "spot" else "fallback")))
        return result

    def _group(self, name):
        return self.inventory.add_group(to_safe_group_name(self.get_option("group_prefix") + name, force=True,
                                                           silent=True))

    def _populate(self, pool_name, records):
        address_key = "ip" if self.get_option("address") == "public" else "private_ip"
        strict = self.get_option("strict")
        pool_group = self._group("pool_" + pool_name)
        groups = {name: self._group(name) for name in ("spot", "fallback", "leased", "ready", "pending")}

        for record in records:
            address = record.get(address_key)
            if not address and not self.get_option("include_pending"):
                continue
            host = self.inventory.add_host(record["id"], group=pool_group)
            hostvars = {"ec2spot_pool": pool_name, "ec2spot_leased": record["leased"],
                        "ec2spot_public_ip": record.get("ip"), "ec2spot_private_ip": record.get("private_ip")}
            for key, variable in ENTRY_VARS:
                if record.get(key) is not None:
                    hostvars[variable] = record[key]
            if record.get("state"):
                hostvars["ec2spot_state"] = record["state"]
            if address:
                hostvars["ansible_host"] = address
            for variable, value in hostvars.items():
                self.inventory.set_variable(host, variable, value)

            if record.get("type") in ("spot", "fallback"):
                self.inventory.add_child(groups[record["type"]], host)
            if not address:
                self.inventory.add_child(groups["pending"], host)
            elif record["leased"]:
                self.inventory.add_child(groups["leased"], host)
            else:
                self.inventory.add_child(groups["ready"], host)

            # compose, groups and keyed_groups of the constructed fragment, on the variables set above.
            self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict=strict)

    def verify_file(self, path):
        return BaseInventoryPlugin.verify_file(self, path) and os.path.basename(to_native(path)).endswith(
            self.INVENTORY_FILE_SUFFIXES)
