# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Options every ec2spot.pool module has: which pool, and where its state file lives.
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
  state_dir:
    description:
      - Directory of the pool state files. Created private to its owner (mode C(0700), whatever the umask).
      - Defaults to C($XDG_STATE_HOME/ec2spot), or C(~/.local/state/ec2spot) when C(XDG_STATE_HOME) is unset.
      - Refused, with the fix in the message, when it (or its C(code) subdirectory, or a file in it) is not yours
        or can be written by other users, or when a parent directory can be written by other users and is not
        sticky. A shared directory such as C(/tmp) is not a state directory; a private directory inside it is.
    type: path
  pool_file:
    description:
      - Full path of this pool's state file; overrides O(state_dir). Its directory is the state directory, with
        the same rules.
      - The file holds no secret. It is written with mode C(0600) by an atomic replace, under a lock on the
        sidecar file C(<pool_file>.lock), which is only created beside a valid pool file.
    type: path
notes:
  - Run these modules on the controller (C(hosts=localhost) or C(delegate_to=localhost)); the pool state
    lives there.
"""
