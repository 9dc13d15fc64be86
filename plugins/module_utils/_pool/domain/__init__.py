# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool's rules as plain values: entries and leases, the refill's decide/settle, identity (tags, pool ids),
defaults, errors and time formats. Nothing here calls AWS, touches a file or imports anything outside this folder."""
