# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a pool lives: the store interface (base.py, with the refill lease), the file store for one controller and
the DynamoDB store for many, siblings behind that interface. They may import the domain and _aws, never the
operations."""
