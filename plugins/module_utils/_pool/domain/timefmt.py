# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Times as the pool keeps them: UTC, to the second, as 2026-11-22T10:00:00Z. Standard library only."""

from __future__ import annotations

import datetime
import re

TIME_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def isoformat(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    """The inverse of isoformat(). Not strptime: its first call imports _strptime and calendar (3-8 ms measured),
    which every default `spot_pool_get` would pay when it reads the pool's verified_at."""
    if not text:
        return None
    if not TIME_RE.match(text):
        raise ValueError("time data %r does not match format '%%Y-%%m-%%dT%%H:%%M:%%SZ'" % (text,))
    return datetime.datetime.fromisoformat(text[:-1]).replace(tzinfo=datetime.timezone.utc)
