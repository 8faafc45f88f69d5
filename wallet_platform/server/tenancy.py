"""Tenants: a credential limited to wallet ids with one prefix stays inside them.

A token or certificate granted ``writer[acme-]`` (``wallet_platform.server.grants``)
may only name wallets whose id starts with ``acme-``, so one team's service can
neither move nor read another team's money. :data:`WALLET_FIELDS` lists, per RPC,
every request field that holds a wallet id; for a tenant-limited caller each of them
must start with the prefix, else ``PERMISSION_DENIED``. An empty field fails too: for
the list and watch RPCs an empty filter means "every wallet", which is exactly what
a tenant may not ask for.

RPCs whose reach cannot be checked from the request alone are refused to
tenant-limited callers rather than filtered: ``GetTransfer`` (a transfer id says
nothing about its wallets; use ``ListTransfers`` or ``WatchTransfers`` with
``wallet_id``), ``GetTransferSummary`` (counts over every wallet), RPCs with a
streamed request, and any RPC missing from the table (new RPCs are closed to tenants
until someone lists their wallet fields). Batch RPCs (:data:`BATCH_WALLET_FIELDS`)
have every item checked the same way; one foreign item refuses the whole call before
any item starts. Callers without a prefix are not affected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wallet_platform.server.grants import Principal

_WALLET = "/wallet.v1.WalletService/"
_TRANSFER = "/wallet.v1.TransferService/"

# Full gRPC method name -> the request fields holding wallet ids (all are checked).
WALLET_FIELDS: Mapping[str, tuple[str, ...]] = {
    _WALLET + "CreateWallet": ("wallet_id",),
    _WALLET + "GetWallet": ("wallet_id",),
    _WALLET + "Deposit": ("wallet_id",),
    _WALLET + "Withdraw": ("wallet_id",),
    _WALLET + "ListWalletEvents": ("wallet_id",),
    _WALLET + "FreezeWallet": ("wallet_id",),
    _WALLET + "UnfreezeWallet": ("wallet_id",),
    _WALLET + "DebitForTransfer": ("wallet_id", "to_wallet_id"),
    _WALLET + "CreditForTransfer": ("wallet_id",),
    _WALLET + "RefundForTransfer": ("wallet_id",),
    _TRANSFER + "CreateTransfer": ("from_wallet_id", "to_wallet_id"),
    _TRANSFER + "ListTransfers": ("wallet_id",),
    _TRANSFER + "WatchTransfers": ("wallet_id",),
    "/wallet.v1.AnalyticsService/GetWalletStats": ("wallet_id",),
    "/wallet.v1.FraudService/ListFraudAlerts": ("wallet_id",),
}

# Batch RPCs: the repeated field of items -> each item's fields holding wallet ids.
# Every item is checked before any starts; one foreign wallet id refuses the whole call
# (a credential's reach is a property of the call, not a business outcome of an item).
BATCH_WALLET_FIELDS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    _TRANSFER + "BatchCreateTransfers": ("requests", ("from_wallet_id", "to_wallet_id")),
}

_SHOWN = 64  # longest wallet id quoted back in a refusal


def tenant_refusal(principal: Principal, method: str, request: Any) -> str | None:
    """Why ``principal`` may not make this request (its tenant), or None when it may.

    ``request`` is None for an RPC with a streamed request (nothing to check up front).
    """
    prefix = principal.wallet_prefix
    if prefix is None:
        return None
    name = method.rsplit("/", 1)[-1]
    batch = BATCH_WALLET_FIELDS.get(method)
    if batch is not None and request is not None:
        items_field, item_fields = batch
        for index, item in enumerate(getattr(request, items_field)):
            outside = _outside(principal, item, item_fields, f"{items_field}[{index}].")
            if outside is not None:
                return f"{principal.subject} is limited to wallets {prefix}*: {name} {outside}"
        return None
    fields = WALLET_FIELDS.get(method)
    if not fields or request is None:
        return f"{principal.subject} is limited to wallets {prefix}*: {name} is not available"
    outside = _outside(principal, request, fields, "")
    if outside is not None:
        return f"{principal.subject} is limited to wallets {prefix}*: {name} {outside}"
    return None


def _outside(principal: Principal, message: Any, fields: tuple[str, ...], path: str) -> str | None:
    """The first of ``fields`` of ``message`` naming a wallet the caller does not own."""
    for field in fields:
        wallet_id = getattr(message, field, "")
        if not isinstance(wallet_id, str) or not principal.owns(wallet_id):
            shown = str(wallet_id)[:_SHOWN]
            return f"{path}{field}={shown!r} is outside them"
    return None
