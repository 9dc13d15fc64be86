# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The defaults of a pool's launch options, stated once.

spot_pool_init's argument spec, operations.launch_settings (what init records in the pool file), and the launcher
and the refill (for a pool file that lacks a key) all read them here. The default `fallback_on` codes are
launcher.DEFAULT_FALLBACK_ON: they are the launcher's error classes. This module imports nothing, so that any
module may use it at no cost. Module DOCUMENTATION states each value again, as ansible-doc shows it;
tests/unit/test_defaults.py checks that the two agree.
"""

from __future__ import annotations

# Seconds an offering is not asked again after a capacity error or an interruption (and Spot stays off after an
# account limit).
COOLDOWN_SECONDS = 180
# Seconds before an unknown instance with the pool's tag is marked as an orphan, and again before it is ended.
ORPHAN_GRACE_SECONDS = 600
# What the refill does with a fallback it retires or whose lease expired: "stop" keeps it for reuse.
FALLBACK_ACTION = "stop"
FALLBACK_ACTIONS = ("stop", "terminate")
# How the Spot fleet picks among the offerings (CreateFleet SpotOptions.AllocationStrategy); the first is the default.
ALLOCATION_STRATEGIES = ("price-capacity-optimized", "lowest-price", "capacity-optimized")
ALLOCATION_STRATEGY = ALLOCATION_STRATEGIES[0]
# Where a pool's state lives: "file" (one JSON file on this controller, the default: nothing to set up) or
# "dynamodb" (one table that any number of controllers share; dynamo.py). The first is the default.
STORES = ("file", "dynamodb")
STORE = STORES[0]
# The DynamoDB table of store=dynamodb (one table holds any number of pools).
DEFAULT_TABLE = "ec2spot-pool"
