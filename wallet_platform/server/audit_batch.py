"""The audit rows of a batch call's items: one per item, like a single call's.

A batch call gets its own row (method ``BatchDeposit`` and so on) whose request JSON
only counts the items (``{"items": 500, "request_bytes": 41234}``: the items are in
their own rows) and, when it was answered, one row per item:

- ``audit_id``: the item's own id (``batches.item_audit_id``), which is also the id
  stamped on the ledger events the item wrote, so an event leads to its item's row;
- ``method``: the single RPC the item is (``/wallet.v1.WalletService/Deposit``), so
  every deposit is found the same way whether it came alone or in a batch;
- ``request_json``: the item's request, redacted like a single call's (a refused
  item's as the fixed-size summary), with one extra top-level key ``batch``:
  ``{"audit_id": <the batch row's id>, "index": <position in the batch>}``;
- ``status_code`` / ``error_message``: the item's own outcome;
- caller, peer, start time and duration: the batch call's.

A batch refused as a whole (bad size, a tenant's foreign wallet, a missing role) has
only its own row: none of its items ran. Before it runs, a batch reserves backlog room
for its item rows (:func:`item_rows_bytes`, ``audit_backlog``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from google.rpc import code_pb2

from wallet_platform.observability.audit_backlog import ROW_OVERHEAD_BYTES
from wallet_platform.observability.audit_request import (
    MAX_REFUSED_MESSAGE,
    MAX_TEXT,
    REFUSED_STATUSES,
    request_json,
    request_summary,
)
from wallet_platform.server.batches import BATCH_METHODS, batch_items, item_audit_id


def item_rows(
    method: str, request: Any, response: Any, batch_row: dict[str, Any]
) -> Iterator[tuple[dict[str, Any], bool]]:
    """(row, refused) for each item of an answered batch call, in item order."""
    batch_audit_id = batch_row["audit_id"]
    for item, result in zip(batch_items(method, request), response.results, strict=True):
        status, message = "OK", None
        if result.WhichOneof("result") == "error":
            status = code_pb2.Code.Name(result.error.code)
            message = result.error.message or None
        refused = status in REFUSED_STATUSES
        link = {"batch": {"audit_id": batch_audit_id, "index": item.index}}
        limit = MAX_REFUSED_MESSAGE if refused else MAX_TEXT
        row = {
            **batch_row,
            "audit_id": item_audit_id(batch_audit_id, item.index),
            "method": item.method or method,
            "request_json": (
                request_summary(item.request, link) if refused else request_json(item.request, link)
            ),
            "status_code": status,
            "error_message": message[:limit] if message else None,
        }
        yield row, refused


def batch_request_json(method: str, request: Any) -> str:
    """The batch row's request: how many items and bytes (the items have their own rows)."""
    items = len(getattr(request, BATCH_METHODS[method].items_field))
    return json.dumps({"items": items, "request_bytes": request.ByteSize()}, sort_keys=True)


# A row's columns besides the request (ids, method, caller, peer, status), in bytes.
_ROW_COLUMNS_BYTES = 200


def item_rows_bytes(method: str, request: Any) -> int:
    """About how much backlog a batch's item rows take (``audit_backlog.row_bytes``):
    per item the row overhead and its other columns, plus its request as JSON (about
    twice its protobuf size)."""
    items = len(getattr(request, BATCH_METHODS[method].items_field))
    return items * (ROW_OVERHEAD_BYTES + _ROW_COLUMNS_BYTES) + 2 * request.ByteSize()
