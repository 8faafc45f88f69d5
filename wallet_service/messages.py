"""Domain objects <-> ``wallet.v1`` protobuf messages, in one place.

Two users: the gRPC edge (:mod:`wallet_service.grpc_api`) maps the service's domain
results to replies, and the persistence adapter (:mod:`wallet_service.adapters.codec`)
stores each write's outcome as its response message's bytes and queues its event as
the outbox payload. The mapping is lossless both ways for every field the service
sets, so an outcome decoded from its stored bytes and mapped again gives the very
bytes that were stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from wallet.v1 import wallet_pb2
from wallet_platform.clock import ensure_utc
from wallet_platform.messaging.events import KIND_BY_ENUM, KIND_BY_NAME
from wallet_service import domain

STATUS_TO_PB = {
    domain.ACTIVE: wallet_pb2.WALLET_STATUS_ACTIVE,
    domain.FROZEN: wallet_pb2.WALLET_STATUS_FROZEN,
}
STATUS_FROM_PB = {value: name for name, value in STATUS_TO_PB.items()}

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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> Timestamp:
    """``value`` as a Timestamp (the same fields ``Timestamp.FromDatetime`` sets).

    Computed from the offset to the epoch: three times cheaper than ``FromDatetime``,
    and every write builds three of them per message.
    """
    delta = ensure_utc(value) - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1_000)


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


def _name(enum: Any, value: int) -> str:
    """An enum value's protobuf name, or its number when this version has none."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def wallet_from_pb(message: wallet_pb2.Wallet) -> domain.Wallet:
    return domain.Wallet(
        wallet_id=message.wallet_id,
        currency=message.currency,
        balance=message.balance,
        status=STATUS_FROM_PB.get(message.status) or _name(wallet_pb2.WalletStatus, message.status),
        version=message.version,
        created_at=message.created_at.ToDatetime(tzinfo=UTC),
        updated_at=message.updated_at.ToDatetime(tzinfo=UTC),
    )


def event_from_pb(message: wallet_pb2.WalletEvent) -> domain.WalletEvent:
    return domain.WalletEvent(
        event_id=message.event_id,
        wallet_id=message.wallet_id,
        sequence=message.sequence,
        type=KIND_BY_ENUM[message.type].name
        if message.type in KIND_BY_ENUM
        else _name(wallet_pb2.WalletEventType, message.type),
        amount=message.amount,
        balance_after=message.balance_after,
        currency=message.currency,
        transfer_id=message.transfer_id or None,
        request_id=message.request_id,
        audit_id=message.audit_id or None,
        occurred_at=message.occurred_at.ToDatetime(tzinfo=UTC),
    )


def has_event(method: str) -> bool:
    """Whether the response of write RPC ``method`` carries the event it appended."""
    return "event" in RESPONSE_TYPES[method].DESCRIPTOR.fields_by_name


def response_to_pb(
    method: str,
    result: domain.WriteResult,
    event_pb: wallet_pb2.WalletEvent | None = None,
) -> Message:
    """The response message of write RPC ``method`` for ``result``: the message the
    adapter stored for it (with ``replayed`` set), else one built from the domain.

    ``event_pb``: the event's message when the caller built it already (the adapter
    builds it once for the outbox row and the stored response).
    """
    response_type = RESPONSE_TYPES[method]
    if result.stored_response is not None:  # the answer as stored: encoded once
        stored = response_type.FromString(result.stored_response)
        stored.replayed = result.replayed  # type: ignore[attr-defined]
        return stored
    response = response_type(wallet=wallet_to_pb(result.wallet))
    if result.event is not None and has_event(method):
        response.event.CopyFrom(  # type: ignore[attr-defined]
            event_pb if event_pb is not None else event_to_pb(result.event)
        )
    if result.replayed:
        response.replayed = True  # type: ignore[attr-defined]
    return response


def result_from_stored(method: str, stored: bytes) -> domain.WriteResult:
    """The replayed result of a write whose response message was stored as ``stored``.

    The domain view is decoded leniently (a value this version has no name for keeps
    its protobuf name); the answer itself is ``stored``, untouched.
    """
    response = RESPONSE_TYPES[method].FromString(stored)
    event = None
    if has_event(method) and response.HasField("event"):
        event = event_from_pb(response.event)  # type: ignore[attr-defined]
    wallet = wallet_from_pb(response.wallet)  # type: ignore[attr-defined]
    return domain.WriteResult(wallet, event, replayed=True, stored_response=stored)
