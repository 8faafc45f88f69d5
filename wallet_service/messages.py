"""Domain objects <-> ``wallet.v1`` protobuf messages, in one place.

The service builds each protobuf once per write: the same ``WalletEvent`` message is
the outbox payload, part of the stored idempotent response and the gRPC reply.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from wallet.v1 import wallet_pb2
from wallet_platform.clock import ensure_utc
from wallet_platform.messaging.events import KIND_BY_NAME
from wallet_service import domain

STATUS_TO_PB = {
    domain.ACTIVE: wallet_pb2.WALLET_STATUS_ACTIVE,
    domain.FROZEN: wallet_pb2.WALLET_STATUS_FROZEN,
}

# The response message of each write RPC: also the format of its stored outcome.
RESPONSE_TYPES: dict[str, type[Message]] = {
    "CreateWallet": wallet_pb2.CreateWalletResponse,
    "Deposit": wallet_pb2.DepositResponse,
    "Withdraw": wallet_pb2.WithdrawResponse,
    "FreezeWallet": wallet_pb2.FreezeWalletResponse,
    "UnfreezeWallet": wallet_pb2.UnfreezeWalletResponse,
    "DebitForTransfer": wallet_pb2.DebitForTransferResponse,
    "CreditForTransfer": wallet_pb2.CreditForTransferResponse,
    "RefundForTransfer": wallet_pb2.RefundForTransferResponse,
}


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(ensure_utc(value))
    return stamp


def wallet_to_pb(wallet: domain.Wallet) -> wallet_pb2.Wallet:
    return wallet_pb2.Wallet(
        wallet_id=wallet.wallet_id,
        currency=wallet.currency,
        balance=wallet.balance,
        status=STATUS_TO_PB[wallet.status],
        version=wallet.version,
        created_at=timestamp(wallet.created_at),
        updated_at=timestamp(wallet.updated_at),
    )


def event_to_pb(event: domain.WalletEvent) -> wallet_pb2.WalletEvent:
    return wallet_pb2.WalletEvent(
        event_id=event.event_id,
        wallet_id=event.wallet_id,
        sequence=event.sequence,
        type=KIND_BY_NAME[event.type].enum,  # type: ignore[arg-type]
        amount=event.amount,
        balance_after=event.balance_after,
        transfer_id=event.transfer_id or "",
        request_id=event.request_id,
        occurred_at=timestamp(event.occurred_at),
        currency=event.currency,
        audit_id=event.audit_id or "",
    )
