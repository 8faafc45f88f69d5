"""Tenants: a credential limited to wallet ids with one prefix stays inside them.

A token or certificate granted ``writer[acme-]`` (``wallet_platform.server.grants``)
may only name wallets whose id starts with ``acme-``, so one team's service can
neither move nor read another team's money. The RPC table (``rpc_policy``) lists, per
RPC, every request field that holds a wallet id (``wallet_fields``); for a
tenant-limited caller each of them must start with the prefix, else
``PERMISSION_DENIED``. An empty field fails too: for
the list and watch RPCs an empty filter means "every wallet", which is exactly what
a tenant may not ask for.

RPCs whose reach cannot be checked from the request alone are refused to
tenant-limited callers rather than filtered: ``GetTransfer`` (a transfer id says
nothing about its wallets; use ``ListTransfers`` or ``WatchTransfers`` with
``wallet_id``), ``GetTransferSummary`` (counts over every wallet), RPCs with a
streamed request, and any RPC whose row lists no wallet fields (new RPCs are closed to
tenants until someone lists them). Callers without a prefix are not affected.

A batch RPC is checked item by item with the fields of each item's single RPC, and ONE
item outside the prefix refuses the whole call before any item runs: a tenant's client
that names another tenant's wallet is misbehaving (or attacking), and refusing the call
up front keeps "which of my items ran?" from having a partial answer. The wallet
batches (``batches``) and ``BatchCreateTransfers`` (:data:`TRANSFER_BATCH`) alike. A
step item with no step set cannot be checked and refuses the call too.
"""

from __future__ import annotations

from typing import Any

from wallet_platform.server.batches import BATCH_METHODS, batch_items, is_batch_request
from wallet_platform.server.grants import Principal
from wallet_platform.server.rpc_policy import policy

_SHOWN = 64  # longest wallet id quoted back in a refusal

# Transfers in a batch: each item is checked as the single CreateTransfer it is (the
# orchestrator's batch is not one of ``batches``: its items share the call's audit id).
TRANSFER_BATCH = "/wallet.v1.TransferService/BatchCreateTransfers"
SINGLE_TRANSFER = "/wallet.v1.TransferService/CreateTransfer"


def tenant_refusal(principal: Principal, method: str, request: Any) -> str | None:
    """Why ``principal`` may not make this request (its tenant), or None when it may.

    ``request`` is None for an RPC with a streamed request (nothing to check up front).
    """
    prefix = principal.wallet_prefix
    if prefix is None:
        return None
    name = method.rsplit("/", 1)[-1]
    if is_batch_request(method, request):
        return _batch_refusal(principal, method, request)
    if method == TRANSFER_BATCH and request is not None:
        fields = policy(SINGLE_TRANSFER).wallet_fields
        for index, item in enumerate(request.requests):
            refused = _fields_refusal(principal, name, item, fields, f"requests[{index}].")
            if refused is not None:
                return refused
        return None
    fields = policy(method).wallet_fields
    if not fields or request is None:
        return f"{principal.subject} is limited to wallets {prefix}*: {name} is not available"
    return _fields_refusal(principal, name, request, fields, "")


def _fields_refusal(
    principal: Principal, name: str, request: Any, fields: tuple[str, ...], path: str
) -> str | None:
    for field in fields:
        wallet_id = getattr(request, field, "")
        if not isinstance(wallet_id, str) or not principal.owns(wallet_id):
            shown = str(wallet_id)[:_SHOWN]
            return (
                f"{principal.subject} is limited to wallets {principal.wallet_prefix}*: "
                f"{name} {path}{field}={shown!r} is outside them"
            )
    return None


def _batch_refusal(principal: Principal, method: str, request: Any) -> str | None:
    """The first item of a batch outside ``principal``'s prefix, as a refusal."""
    name = method.rsplit("/", 1)[-1]
    items_field = BATCH_METHODS[method].items_field
    for item in batch_items(method, request):
        path = item.label(items_field)
        fields = policy(item.method).wallet_fields if item.method else None
        if not fields:
            return (
                f"{principal.subject} is limited to wallets {principal.wallet_prefix}*: "
                f"{name} {path} names no operation that can be checked"
            )
        refused = _fields_refusal(principal, name, item.request, fields, path + ".")
        if refused is not None:
            return refused
    return None
