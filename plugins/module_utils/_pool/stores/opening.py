# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Opening a store from its spec (spec.StoreSpec): the one place that makes a FileStore or a DynamoStore.

Apart from spec.py because each store keeps its spec (store.spec): the stores import spec.py, and this module
imports the stores, so no import goes round in a circle (tests/unit/test_layers.py)."""

from __future__ import annotations

from .filestore import FileStore


def open_store(spec, dynamodb_client=None):
    """The store `spec` names: a FileStore, or a DynamoStore on `dynamodb_client` (the caller's: a boto3 DynamoDB
    client, or get's light one of dynamoquery.py), which kind dynamodb needs and kind file ignores."""
    if spec.kind == "file":
        return FileStore(spec.pool_file, spec.pool_name)
    if dynamodb_client is None:
        raise ValueError("a DynamoDB store is opened with its client")
    # Imported only here: the file store's callers (get above all) never load the DynamoDB store.
    from .dynamodb import DynamoStore  # pylint: disable=import-outside-toplevel

    return DynamoStore(dynamodb_client, spec.table, spec.pool_name, state_dir=spec.state_dir)
