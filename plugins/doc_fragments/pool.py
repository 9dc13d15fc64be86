# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Options every ec2spot.pool module has: which pool, and where its state lives (a file, or a DynamoDB table).
    DOCUMENTATION = r"""
options:
  pool_name:
    description:
      - Name of the pool. Several pools can live side by side; each has its own state file, its own refill
        job, and its instances carry the tag C(ec2spot:pool=<pool_name>).
      - 1 to 64 letters, digits, C(.), C(_) or C(-), starting with a letter or digit. An empty name is an error
        (never the pool C(default)), so that an unset variable cannot select, or end, another pool.
    type: str
    default: default
  store:
    description:
      - Where the pool's state lives.
      - V(file) keeps it in a JSON file on this controller (O(state_dir), O(pool_file)). Nothing to set up;
        for one controller.
      - V(dynamodb) keeps it in the DynamoDB table O(dynamodb_table), which any number of controllers share (CI
        runners, ephemeral ones too). A hand-out is one conditional write, so two controllers never get the same
        instance, and one refill job at a time works for the pool, whichever controller started it. Needs a
        region (the O(region) option or C(AWS_REGION)), and the DynamoDB permissions the README lists.
      - Every controller that uses a pool must name the same store (and table). A team sets O(store) and
        O(dynamodb_table) once, in C(module_defaults) for the action group C(group/ec2spot.pool.spot) (playbook
        variables C(spot_pool_store) and C(spot_pool_dynamodb_table) in the collection's playbooks).
      - To move a file pool into a table, run M(ec2spot.pool.spot_pool_init) with O(store=dynamodb),
        C(rebuild=true) and the pool's C(pool_id) (see the README).
    type: str
    choices: [file, dynamodb]
    default: file
  dynamodb_table:
    description:
      - The DynamoDB table of O(store=dynamodb); one table holds any number of pools (partition key C(pool), sort
        key C(item), both strings). M(ec2spot.pool.spot_pool_init) creates it when it is missing (see its
        C(create_table)).
      - Has no effect with O(store=file). An empty value is an error (never the default table), so that an unset
        variable cannot select, or end, a pool in another table; leave the option out for the default.
    type: str
    default: ec2spot-pool
  state_dir:
    description:
      - Directory of the pool state files. With O(store=dynamodb) the pool lives in the table, and this directory
        holds only this controller's refill job log and its code copy. Created private to its owner (mode C(0700), whatever the umask).
      - Defaults to C($XDG_STATE_HOME/ec2spot), or C(~/.local/state/ec2spot) when C(XDG_STATE_HOME) is unset. An
        empty value is an error (never the default); leave the option out for the default.
      - Refused, with the fix in the message, when it (or its C(code) subdirectory, or a file in it) is not yours
        or can be written by other users, or when a parent directory can be written by other users and is not
        sticky. A shared directory such as C(/tmp) is not a state directory; a private directory inside it is.
    type: path
  pool_file:
    description:
      - Full path of this pool's state file; overrides O(state_dir). Its directory is the state directory, with
        the same rules.
      - An empty value is an error; leave the option out to use O(state_dir).
      - Only with O(store=file). Given with O(store=dynamodb) it is an error (it would otherwise silently not be
        used), and nothing is changed.
      - The file holds no secret. It is written with mode C(0600) by an atomic replace, under a lock on the
        sidecar file C(<pool_file>.lock), which is only created beside a valid pool file.
    type: path
notes:
  - Run these modules on the controller (C(hosts=localhost) or C(delegate_to=localhost)); the pool state
    lives there (or, with O(store=dynamodb), in the table), and so does the refill job.
"""
