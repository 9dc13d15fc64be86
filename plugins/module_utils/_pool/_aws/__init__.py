# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# This module_utils file is PRIVATE to the ec2spot.pool collection: its names and behaviour may change in any
# release. Do not import it from other collections, playbooks or standalone modules; use amazon.aws instead.
"""AWS access, private to this collection: the light SigV4 client and its EC2 and DynamoDB query clients,
the connection options, and the boto3 calls of EC2.

Why get's path has clients of its own instead of botocore is written once, in retry.py (with the retry rule that
they share with the boto3 calls). Everything here may import the domain (errors, tags); nothing here knows a store
or an operation."""
