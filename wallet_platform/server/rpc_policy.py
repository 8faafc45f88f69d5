"""The one table of what each RPC demands: who may call it, whether it is audited,
which request fields name wallets, whether it counts against the unary-call cap.

Every server layer that treats RPCs differently reads :func:`policy` and nothing else:
authorisation (``security.required_role``), the audit trail (``audit_calls``), tenants
(``tenancy``) and the call limits (``call_limits``). A unit test
(tests/unit/test_rpc_policy.py) fails while an RPC of a served service has no row here,
so adding an RPC to a ``.proto`` means deciding its row.

An RPC missing from the table anyway (a service registered without updating it) gets
:data:`UNLISTED`: ``admin`` only, audited, closed to tenants. New RPCs are closed until
someone decides otherwise, and an extra audit row is better than a missing one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wallet_platform.server.grants import ADMIN, OPERATOR, ORCHESTRATOR, READER, WRITER


@dataclass(frozen=True)
class RpcPolicy:
    """What one RPC demands.

    ``role``: the role a caller needs when authorisation is on; None for RPCs open to
    everyone (health and reflection: load balancers and grpcurl work without
    credentials). ``audited``: every call, accepted or refused, leaves an ``audit_log``
    row (the write RPCs). ``wallet_fields``: the request fields holding wallet ids, each
    of which must carry a tenant's prefix; empty means the RPC's reach cannot be read
    from its request, so tenant-limited callers are refused it. ``capped``: counts
    against ``WALLET_MAX_UNARY_CALLS`` (health ``Check`` does not, so probes answer under
    load); server streams have budgets of their own regardless.
    """

    role: str | None
    audited: bool = False
    wallet_fields: tuple[str, ...] = ()
    capped: bool = True


def _read(*wallet_fields: str) -> RpcPolicy:
    return RpcPolicy(READER, wallet_fields=wallet_fields)


def _write(role: str, *wallet_fields: str) -> RpcPolicy:
    return RpcPolicy(role, audited=True, wallet_fields=wallet_fields)


_WALLET = "/wallet.v1.WalletService/"
_TRANSFER = "/wallet.v1.TransferService/"
_HEALTH = "/grpc.health.v1.Health/"
_OPEN = RpcPolicy(None)

# Full gRPC method name -> what it demands.
POLICIES: Mapping[str, RpcPolicy] = {
    _WALLET + "CreateWallet": _write(WRITER, "wallet_id"),
    _WALLET + "GetWallet": _read("wallet_id"),
    _WALLET + "Deposit": _write(WRITER, "wallet_id"),
    _WALLET + "Withdraw": _write(WRITER, "wallet_id"),
    _WALLET + "ListWalletEvents": _read("wallet_id"),
    _WALLET + "FreezeWallet": _write(OPERATOR, "wallet_id"),
    _WALLET + "UnfreezeWallet": _write(OPERATOR, "wallet_id"),
    _WALLET + "DebitForTransfer": _write(ORCHESTRATOR, "wallet_id", "to_wallet_id"),
    _WALLET + "CreditForTransfer": _write(ORCHESTRATOR, "wallet_id"),
    _WALLET + "RefundForTransfer": _write(ORCHESTRATOR, "wallet_id"),
    # A batch needs its items' role; tenants are checked item by item with each item's
    # single RPC's fields (``tenancy``, ``batches``), so the batch row lists none.
    _WALLET + "BatchDeposit": _write(WRITER),
    _WALLET + "BatchWithdraw": _write(WRITER),
    _WALLET + "BatchApplyTransferSteps": _write(ORCHESTRATOR),
    _TRANSFER + "CreateTransfer": _write(WRITER, "from_wallet_id", "to_wallet_id"),
    _TRANSFER + "BatchCreateTransfers": _write(WRITER),
    _TRANSFER + "GetTransfer": _read(),  # a transfer id says nothing about its wallets
    _TRANSFER + "ListTransfers": _read("wallet_id"),
    _TRANSFER + "GetTransferSummary": _read(),  # counts over every wallet
    _TRANSFER + "WatchTransfers": _read("wallet_id"),
    "/wallet.v1.AnalyticsService/GetWalletStats": _read("wallet_id"),
    "/wallet.v1.FraudService/ListFraudAlerts": _read("wallet_id"),
    _HEALTH + "Check": RpcPolicy(None, capped=False),
    _HEALTH + "List": _OPEN,
    _HEALTH + "Watch": _OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _OPEN,
}

UNLISTED = RpcPolicy(ADMIN, audited=True)


def policy(method: str) -> RpcPolicy:
    """What ``method`` (a full gRPC method name) demands."""
    return POLICIES.get(method, UNLISTED)
