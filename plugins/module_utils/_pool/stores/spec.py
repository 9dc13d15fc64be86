# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a pool lives, as one small value (StoreSpec), and the rules of the options that say it.

Everything that opens a store names it the same way: the modules and the inventory plugin make a spec from their
options (StoreSpec.from_options), the refill job from its command line (from_job_arguments, of what
job_arguments() wrote when get started it), and opening.open_store makes the store from the spec and the DynamoDB
client its caller made. Every bad option is refused while the spec is made, so before any client is made or any
call is sent. Each store keeps the spec that opens it again (`store.spec`): the refill job's command line is its
job_arguments().

A spec is resolved: the defaults are filled in (the table, the state directory) and paths are absolute, so two
specs of the same store are equal, and spec -> job arguments -> spec gives the spec back.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple

from ..domain.defaults import DEFAULT_TABLE
from ..domain.defaults import STORE
from ..domain.errors import InvalidRequest
from ..domain.pool import check_pool_name
from .localfiles import pool_file_path
from .localfiles import state_directory

# The options that say where a pool lives, with what to write instead of an empty value. Empty (an unset CI variable,
# `-e spot_pool_dynamodb_table=`) never means the default: it would select, and let terminate end, another pool.
LOCATION_OPTIONS = (
    ("pool_name", "name the pool explicitly (for the default pool, pool_name: default)"),
    ("dynamodb_table", "name the table explicitly, or leave the option out for the default table %s" % DEFAULT_TABLE),
    ("state_dir", "name the directory, or leave the option out for the default (~/.local/state/ec2spot)"),
    ("pool_file", "name the file, or leave the option out (the file is then <state_dir>/<pool_name>.json)"),
)
# DynamoDB's rule for table names (fullmatch).
TABLE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{3,255}")


def check_location_options(params):
    """Refuse (InvalidRequest) an option naming where the pool lives that is given but empty or blank; None is
    "not given" (the option's default applies). Changes nothing."""
    for name, fix in LOCATION_OPTIONS:
        value = params.get(name)
        if value is not None and not str(value).strip():
            raise InvalidRequest("%s is empty: %s" % (name, fix))


def check_table_name(table):
    """Refuse (InvalidRequest) what DynamoDB would not take as a table name."""
    if not isinstance(table, str) or not TABLE_NAME_RE.fullmatch(table):
        raise InvalidRequest("dynamodb_table %r is not a DynamoDB table name: use 3-255 letters, digits, '_', "
                             "'-' or '.'" % (table,))


class StoreSpec(namedtuple("StoreSpec", ("kind", "pool_name", "table", "state_dir", "pool_file"))):
    """Where one pool lives. Fields:

    - ``kind``: ``file`` or ``dynamodb`` (domain/defaults.py STORES);
    - ``pool_name``: the pool's name (checked: domain/pool.py check_pool_name);
    - ``table``: the DynamoDB table (``dynamodb``; None for ``file``);
    - ``state_dir``: the absolute directory of this controller's local files (the refill job's log and code copy;
      for ``file``, the pool file's directory);
    - ``pool_file``: the pool file's absolute path (``file``; None for ``dynamodb``).

    Made by its constructors below, which check what they are given; never changed."""

    __slots__ = ()

    @classmethod
    def file(cls, path, pool_name):
        """The file store of the pool file `path` (as found by localfiles.pool_file_path)."""
        check_pool_name(pool_name)
        return cls("file", pool_name, None, os.path.dirname(path), path)

    @classmethod
    def dynamodb(cls, table, pool_name, state_dir=None):
        """The DynamoDB store of pool `pool_name` in `table`; `state_dir` as the option (None: the default)."""
        check_table_name(table)
        check_pool_name(pool_name)
        return cls("dynamodb", pool_name, table, state_directory(state_dir), None)

    @classmethod
    def from_options(cls, params):
        """The spec that the options of a module or of the inventory plugin name (pool_name, store,
        dynamodb_table, state_dir, pool_file: the pool doc fragment). Raises InvalidRequest for bad ones: an
        empty one among them (check_location_options), pool_file with store=dynamodb, a bad table or pool name."""
        check_location_options(params)
        name = params.get("pool_name")  # an empty name is an error, never `default`
        if (params.get("store") or STORE) != "dynamodb":
            return cls.file(pool_file_path(name, params.get("state_dir"), params.get("pool_file")), name)
        if params.get("pool_file"):
            raise InvalidRequest("pool_file %s names a JSON state file, and store=dynamodb keeps the pool in DynamoDB "
                                 "table %s: remove pool_file (state_dir still says where the refill job's log and code "
                                 "copy go), or use store=file" % (params["pool_file"], params.get("dynamodb_table")))
        table = DEFAULT_TABLE if params.get("dynamodb_table") is None else params["dynamodb_table"]
        return cls.dynamodb(table, name, params.get("state_dir"))

    @classmethod
    def from_job_arguments(cls, args):
        """The spec of the refill job's command line: `args` parsed by a parser that add_job_arguments() made."""
        if args.dynamodb_table is None:
            return cls.file(args.state_file, args.pool_name)
        return cls.dynamodb(args.dynamodb_table, args.pool_name, args.state_dir)

    def job_arguments(self):
        """The refill job's command-line arguments that name this store (from_job_arguments reads them back)."""
        if self.kind == "file":
            return ["--state-file", self.pool_file, "--pool-name", self.pool_name]
        return ["--dynamodb-table", self.table, "--pool-name", self.pool_name, "--state-dir", self.state_dir]


def add_job_arguments(parser):
    """Add the options that StoreSpec.job_arguments() writes to the refill job's argparse `parser`."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-file")
    where.add_argument("--dynamodb-table")
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--state-dir", help="with --dynamodb-table: where the job's log goes")
