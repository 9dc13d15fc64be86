# -*- coding: utf-8 -*-

# Copyright (c) ec2spot.pool maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Shared attribute descriptions for the ec2spot.pool modules.
#
# Usage in a module:
#
#   extends_documentation_fragment:
#     - ec2spot.pool.attributes              # declares check_mode, diff_mode, idempotent
#     - ec2spot.pool.attributes.action_group # membership in group/ec2spot.pool.spot
#   attributes:
#     check_mode:
#       support: full
#     diff_mode:
#       support: none
#     idempotent:
#       support: partial
#       details:
#         - why it is only partial
#
# A read-only module adds ec2spot.pool.attributes.info_module instead of writing the
# check_mode/diff_mode/idempotent support lines itself.
#
# The main fragment only *describes* the attributes; each module states its own support level,
# because that differs per module and validate-modules requires every attribute to have one.

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description:
      - Can run in C(check_mode) and report whether it would change anything, without changing the pool,
        its state file or any EC2 instance.
  diff_mode:
    description:
      - Returns a before/after view of the pool state when run with C(--diff).
  idempotent:
    description:
      - Run twice in a row outside check mode with the same arguments, the second run reports no change.
      - This assumes that nothing else (another play, the refill job, an EC2 Spot interruption) changed the pool
        in between.
"""

    # For modules that only read the pool: use together with the main fragment.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
    details:
      - This action does not modify state.
"""

    # Every module of the collection is listed in the action group ec2spot.pool.spot (meta/runtime.yml),
    # which extends amazon.aws.aws, so connection options can be set once through module_defaults.
    ACTION_GROUP = r"""
options: {}
attributes:
  action_group:
    description:
      - Use C(group/ec2spot.pool.spot) in C(module_defaults) to set defaults (for example C(region) or
        C(endpoint_url)) for this module.
    support: full
    membership:
      - ec2spot.pool.spot
"""
