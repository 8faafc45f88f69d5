"""The batch RPCs' shape: which single RPC each item is, and the one size cap.

A batch RPC (``BatchDeposit``, ``BatchWithdraw``, ``BatchApplyTransferSteps``) carries
independent items, each exactly the request of a single RPC. The layers that look
inside requests read the items through :func:`batch_items`:

- tenancy (``tenancy``) checks the wallet ids of every item as the single RPC's;
- the audit trail (``observability.audit``) writes one row per item, named by the
  single RPC, under the item's own audit id (:func:`item_audit_id`);
- the servicer runs each item through the single RPC's code.

:data:`MAX_BATCH_ITEMS` is the most items one batch may carry: large enough to
amortise a round trip and a transaction over many items, small enough that one
batch's response (at most a few hundred bytes per item) stays far below the 4 MiB
message limit (``builder.MAX_MESSAGE_BYTES``), so a full batch can always be
answered. A batch is ONE call for the call limits (``call_limits``), so the item work
of concurrent batches is bounded separately: at most :data:`MAX_ITEMS_IN_FLIGHT` items
of all batch calls run at once in a process (the rest wait their turn), as many as
``WALLET_MAX_UNARY_CALLS``' default lets single calls run.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

MAX_BATCH_ITEMS = 1000
MAX_ITEMS_IN_FLIGHT = 1000

_WALLET = "/wallet.v1.WalletService/"


@dataclass(frozen=True)
class BatchShape:
    """Where a batch request keeps its items and which single RPC each one is.

    ``kinds`` maps an item's kind to the single RPC's full method name: the name of the
    set field of the ``oneof`` named ``oneof`` (step batches), or ``""`` when every
    item is the same RPC (``oneof`` is then empty and the item is the request itself).
    """

    items_field: str
    kinds: Mapping[str, str]
    oneof: str = ""


BATCH_METHODS: Mapping[str, BatchShape] = {
    _WALLET + "BatchDeposit": BatchShape("requests", {"": _WALLET + "Deposit"}),
    _WALLET + "BatchWithdraw": BatchShape("requests", {"": _WALLET + "Withdraw"}),
    _WALLET + "BatchApplyTransferSteps": BatchShape(
        "operations",
        {
            "debit": _WALLET + "DebitForTransfer",
            "credit": _WALLET + "CreditForTransfer",
            "refund": _WALLET + "RefundForTransfer",
        },
        oneof="step",
    ),
}


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch: its index, the single RPC it is (None: no kind set) and
    its request (None when no kind is set)."""

    index: int
    method: str | None
    request: Any

    def label(self, items_field: str) -> str:
        """``requests[3]``: how messages and field paths name this item."""
        return f"{items_field}[{self.index}]"


def is_batch_method(method: str) -> bool:
    return method in BATCH_METHODS


def is_batch_request(method: str, request: Any) -> bool:
    """Whether ``request`` is a decoded request of the batch RPC ``method`` (undecodable
    bytes reach the layers as a placeholder, refused later as INVALID_ARGUMENT)."""
    return method in BATCH_METHODS and isinstance(request, Message)


def batch_items(method: str, request: Any) -> list[BatchItem]:
    """The items of a ``method`` batch request, in order (``method`` must be a batch)."""
    shape = BATCH_METHODS[method]
    items: list[BatchItem] = []
    for index, item in enumerate(getattr(request, shape.items_field)):
        if not shape.oneof:
            items.append(BatchItem(index, shape.kinds[""], item))
            continue
        kind = item.WhichOneof(shape.oneof)
        if kind is None:
            items.append(BatchItem(index, None, None))
        else:
            items.append(BatchItem(index, shape.kinds[kind], getattr(item, kind)))
    return items


def item_audit_id(batch_audit_id: str, index: int) -> str:
    """The audit id of a batch's item ``index``: derived from the batch's, so the audit
    row and the item's ledger events name the same id without passing one around."""
    return str(uuid.uuid5(uuid.UUID(batch_audit_id), str(index)))
