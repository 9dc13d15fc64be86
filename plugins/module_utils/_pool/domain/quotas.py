# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The account's EC2 vCPU quotas (Service Quotas, service code `ec2`): which quota an instance type counts
against, and whether more instances surely do not fit. Plain values in and out; the calls are in launcher.py.

EC2 limits running instances by vCPUs per family group and market, one Service Quotas code each (the "Amazon EC2
instance type quotas" table of the Service Quotas guide, the "Spot Instance quotas" page of the EC2 guide).
The account attribute `max-instances` is not used: AWS says it no longer reflects the limit.

A type whose family this table does not know, or a (family, market) without a quota (High Memory and HPC are not
sold as Spot; the Spot quota of P6 and later is not documented), has no quota here: the check cannot be sure and
the pool is launched with a warning. A wrong mapping would refuse pools EC2 accepts; a missing one only warns.
"""

from __future__ import annotations

import re
from collections import namedtuple

VcpuQuota = namedtuple("VcpuQuota", "code name")
VcpuQuota.__doc__ = """One vCPU quota: `code` its Service Quotas code (L-...), `name` its name as AWS shows it."""

_STANDARD = (VcpuQuota("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
             VcpuQuota("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"))
_G_VT = (VcpuQuota("L-DB2E81BA", "Running On-Demand G and VT instances"),
         VcpuQuota("L-3819A6DF", "All G and VT Spot Instance Requests"))
_P_ON_DEMAND = VcpuQuota("L-417A185B", "Running On-Demand P instances")
_P_SPOT = {  # Spot P quotas by generation: P2-P4 share one, P5 has its own.
    "2": VcpuQuota("L-7212CCBC", "All P4, P3 and P2 Spot Instance Requests"),
    "3": VcpuQuota("L-7212CCBC", "All P4, P3 and P2 Spot Instance Requests"),
    "4": VcpuQuota("L-7212CCBC", "All P4, P3 and P2 Spot Instance Requests"),
    "5": VcpuQuota("L-C4BD4855", "All P5 Spot Instance Requests"),
}
# (On-Demand, Spot) quota by the letters that open the family name (before its first digit or dash).
_BY_LETTERS = {
    "dl": (VcpuQuota("L-6E869C2A", "Running On-Demand DL instances"),
           VcpuQuota("L-85EED4F7", "All DL Spot Instance Requests")),
    "f": (VcpuQuota("L-74FC7D96", "Running On-Demand F instances"),
          VcpuQuota("L-88CF9481", "All F Spot Instance Requests")),
    "g": _G_VT, "gr": _G_VT, "vt": _G_VT,
    "hpc": (VcpuQuota("L-F7808C92", "Running On-Demand HPC instances"), None),
    "inf": (VcpuQuota("L-1945791B", "Running On-Demand Inf instances"),
            VcpuQuota("L-B5D1601B", "All Inf Spot Instance Requests")),
    "trn": (VcpuQuota("L-2C3B7624", "Running On-Demand Trn instances"),
            VcpuQuota("L-6B0D517C", "All Trn Spot Instance Requests")),
    "u": (VcpuQuota("L-43DA4232", "Running On-Demand High Memory instances"), None),
    "x": (VcpuQuota("L-7295265B", "Running On-Demand X instances"),
          VcpuQuota("L-E3A00192", "All X Spot Instance Requests")),
}
_BY_LETTERS.update((letters, _STANDARD) for letters in ("a", "c", "d", "h", "i", "im", "is", "m", "r", "t", "z"))
_FAMILY = re.compile(r"([a-z]+)-?(\d?)")

Fit = namedtuple("Fit", "problem unknown")
Fit.__doc__ = """What `fit` decided.

problem -- None when the instances may fit; else why they surely do not (names each quota and its code).
unknown -- why the check could not be made (types without a known quota, quotas that could not be read);
           when not empty, `problem` is None: a limit that is not known does not block.
"""


def quota_for(instance_type, spot):
    """The VcpuQuota `instance_type` counts against in the Spot (`spot` true) or On-Demand market, or None when
    no quota is known for it. 'm7i.large', 'u-6tb1.metal', 'p4d.24xlarge': the family is what precedes the dot."""
    match = _FAMILY.match(instance_type.split(".", 1)[0].lower())
    if not match:
        return None
    letters, generation = match.groups()
    if letters == "p":
        return _P_SPOT.get(generation) if spot else _P_ON_DEMAND
    pair = _BY_LETTERS.get(letters)
    return pair[1 if spot else 0] if pair else None


def _market(spot):
    return "Spot" if spot else "On-Demand"


def unknown(choices, limits, errors=None):
    """Why the quotas of `choices` are not all known (empty when they are), each reason once.

    choices -- the (instance type, spot) pairs a launch may use (Spot, and On-Demand with fallback).
    limits  -- {quota code: vCPUs}: the quotas read; a code that is absent could not be read.
    errors  -- {quota code: the error code reading it gave}, for the reasons."""
    reasons = []
    for itype, spot in choices:
        quota = quota_for(itype, spot)
        if quota is None:
            reason = "%s %s: no vCPU quota known for this instance family" % (itype, _market(spot))
        elif quota.code not in limits:
            reason = "'%s' (%s) could not be read" % (quota.name, quota.code)
            if (errors or {}).get(quota.code):
                reason += " (%s)" % errors[quota.code]
        else:
            continue
        if reason not in reasons:
            reasons.append(reason)
    return reasons


def fit(count, choices, limits, vcpus, used):
    """Whether `count` more instances surely do not fit the account's vCPU quotas.

    choices, limits -- as for `unknown`.
    vcpus -- {instance type: vCPUs} of the types in `choices`.
    used  -- {quota code: vCPUs} the account's running and pending instances use now.

    Every quota gives room for as many of its smallest type as its free vCPUs hold; the launch may spread over
    all of them, so only a `count` above their sum is refused."""
    reasons = unknown(choices, limits) + ["%s: its vCPU count is not known" % itype
                                          for itype in sorted({itype for itype, _spot in choices} - set(vcpus))]
    if count <= 0 or reasons:
        return Fit(None, reasons)
    smallest = {}
    for itype, spot in choices:
        quota = quota_for(itype, spot)
        smallest[quota] = min([(vcpus[itype], itype)] + ([smallest[quota]] if quota in smallest else []))
    room, parts = 0, []
    for quota, (size, itype) in sorted(smallest.items()):
        limit, in_use = int(limits[quota.code]), used.get(quota.code, 0)
        free = max(0, limit - in_use)
        room += free // size
        parts.append("'%s' (%s) %d vCPUs, %d in use: room for %d %s (%d vCPUs)"
                     % (quota.name, quota.code, limit, in_use, free // size, itype, size))
    if count <= room:
        return Fit(None, [])
    return Fit("%d more instance(s) do not fit the account's vCPU quotas: %s. Ask for a quota increase in Service "
               "Quotas, or choose a smaller size" % (count, "; ".join(parts)), [])
