"""``WalletClient``: the platform's RPCs as methods, with safe retries and typed errors.

Every write the platform accepts is idempotent on its ``request_id``. The client makes
one key per logical call (unless the caller passes its own, e.g. an order id) and sends
every retry of that call with the same key, so a retry after a lost answer returns the
first outcome (``replayed = true``) instead of moving money twice. What is retried, and
for how long, is :mod:`wallet_client.retry`'s business; a failed call raises the
:mod:`wallet_client.errors` class for the server's ``ErrorInfo`` reason.

Each method returns the RPC's response message (``wallet.v1`` generated classes), so
fields the server adds later are there without a new client.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import message, timestamp_pb2

from wallet.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    fraud_pb2,
    fraud_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
    wallet_pb2,
    wallet_pb2_grpc,
)
from wallet_client.batches import MAX_BATCH_ITEMS, BatchSender, ItemOutcome, MoveItem
from wallet_client.channel import TlsConfig, auth_metadata, open_channel
from wallet_client.errors import error_from_rpc
from wallet_client.retry import RetryPolicy, call_with_retries
from wallet_client.transfer_batches import DEFAULT_CHUNK, TransferItem, TransferOutcome
from wallet_client.transfer_batches import batch_create_transfers as send_batches

R = TypeVar("R")
M = TypeVar("M", bound=message.Message)

DEFAULT_TARGET = "127.0.0.1:50051"


def new_request_id() -> str:
    """A fresh idempotency key (the server accepts 1-128 printable ASCII characters)."""
    return str(uuid.uuid4())


def _with_request_id(request: M) -> tuple[M, str | None]:
    """``request`` with a key if its message has a ``request_id`` field (a copy if filled)."""
    if "request_id" not in request.DESCRIPTOR.fields_by_name:
        return request, None
    current: str = getattr(request, "request_id")  # noqa: B009 (any message type)
    if current:
        return request, current
    keyed = type(request)()
    keyed.CopyFrom(request)
    key = new_request_id()
    setattr(keyed, "request_id", key)  # noqa: B010 (any message type)
    return keyed, key


class WalletClient:
    """A connection to the platform (a ``wallet-stack``, or the service owning each RPC).

    ``timeout`` is each attempt's deadline in seconds; ``retry`` bounds the retries and
    the whole call. ``token`` is sent as ``authorization: Bearer``; ``tls`` turns on TLS
    (and mutual TLS with a client certificate). Thread-safe; close it (or use ``with``).
    The raw stubs are ``wallets``, ``transfers``, ``analytics`` and ``fraud``; send
    through :meth:`call` to get the same retries, deadlines and errors.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TlsConfig | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        options: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = auth_metadata(token)
        self._channel = open_channel(target, tls, options)
        self.wallets = wallet_pb2_grpc.WalletServiceStub(self._channel)
        self.transfers = transfer_pb2_grpc.TransferServiceStub(self._channel)
        self.analytics = analytics_pb2_grpc.AnalyticsServiceStub(self._channel)
        self.fraud = fraud_pb2_grpc.FraudServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> WalletClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- any unary RPC ----------------------------------------------------------------

    def call(
        self,
        rpc: Callable[..., R],
        request: M,
        *,
        read: bool = False,
        timeout: float | None = None,
    ) -> R:
        """Send ``request`` through ``rpc`` (a stub method) with retries, deadline, auth.

        A write whose message has an empty ``request_id`` gets a new key, reused by every
        retry; a write whose message has no such field is sent once. Reads (``read``)
        are retried. Failures raise :class:`wallet_client.errors.WalletError` subclasses.
        """
        request_id: str | None = None
        if not read:
            request, request_id = _with_request_id(request)
        attempts = 0

        def attempt(deadline: float) -> R:
            nonlocal attempts
            attempts += 1
            return rpc(request, timeout=deadline, metadata=self._metadata)

        try:
            return call_with_retries(
                attempt,
                safe=read or request_id is not None,
                timeout=timeout or self.timeout,
                policy=self.retry,
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error, request_id=request_id, attempts=attempts) from None

    # --- WalletService ----------------------------------------------------------------

    def create_wallet(
        self,
        currency: str,
        *,
        wallet_id: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> wallet_pb2.CreateWalletResponse:
        """Open an empty wallet (``wallet_id`` empty: the server picks one)."""
        request = wallet_pb2.CreateWalletRequest(
            wallet_id=wallet_id, currency=currency, request_id=request_id or ""
        )
        return self.call(self.wallets.CreateWallet, request, timeout=timeout)

    def get_wallet(
        self,
        wallet_id: str,
        *,
        as_of_sequence: int = 0,
        as_of_time: datetime | None = None,
        timeout: float | None = None,
    ) -> wallet_pb2.GetWalletResponse:
        """The wallet now, or after event ``as_of_sequence``, or at ``as_of_time``."""
        request = wallet_pb2.GetWalletRequest(wallet_id=wallet_id, as_of_sequence=as_of_sequence)
        if as_of_time is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(as_of_time)
            request.as_of_time.CopyFrom(stamp)
        return self.call(self.wallets.GetWallet, request, read=True, timeout=timeout)

    def deposit(
        self,
        wallet_id: str,
        amount: int,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> wallet_pb2.DepositResponse:
        """Credit ``amount`` minor units from outside the platform."""
        request = wallet_pb2.DepositRequest(
            wallet_id=wallet_id, amount=amount, request_id=request_id or ""
        )
        return self.call(self.wallets.Deposit, request, timeout=timeout)

    def withdraw(
        self,
        wallet_id: str,
        amount: int,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> wallet_pb2.WithdrawResponse:
        """Debit ``amount`` minor units to outside the platform; never below zero."""
        request = wallet_pb2.WithdrawRequest(
            wallet_id=wallet_id, amount=amount, request_id=request_id or ""
        )
        return self.call(self.wallets.Withdraw, request, timeout=timeout)

    def batch_deposit(
        self,
        items: Sequence[MoveItem],
        *,
        chunk_size: int = MAX_BATCH_ITEMS,
        timeout: float | None = None,
    ) -> list[ItemOutcome]:
        """Deposit every item through ``BatchDeposit`` calls of at most ``chunk_size``
        items; one outcome per item, in order (see :mod:`wallet_client.batches`)."""
        return self._batch(
            self.wallets.BatchDeposit,
            wallet_pb2.BatchDepositRequest,
            wallet_pb2.DepositRequest,
            items,
            chunk_size,
            timeout,
        )

    def batch_withdraw(
        self,
        items: Sequence[MoveItem],
        *,
        chunk_size: int = MAX_BATCH_ITEMS,
        timeout: float | None = None,
    ) -> list[ItemOutcome]:
        """:meth:`batch_deposit` for withdrawals (``BatchWithdraw``)."""
        return self._batch(
            self.wallets.BatchWithdraw,
            wallet_pb2.BatchWithdrawRequest,
            wallet_pb2.WithdrawRequest,
            items,
            chunk_size,
            timeout,
        )

    def _batch(
        self,
        rpc: Callable[..., Any],
        request_type: Any,
        item_type: Any,
        items: Sequence[MoveItem],
        chunk_size: int,
        timeout: float | None,
    ) -> list[ItemOutcome]:
        sender = BatchSender(
            send=lambda request, deadline: rpc(request, timeout=deadline, metadata=self._metadata),
            request_type=request_type,
            item_type=item_type,
            timeout=timeout or self.timeout,
            policy=self.retry,
            chunk_size=chunk_size,
        )
        return sender.run(items, new_request_id)

    def list_wallet_events(
        self,
        wallet_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> wallet_pb2.ListWalletEventsResponse:
        """One page of the wallet's events, newest first."""
        request = wallet_pb2.ListWalletEventsRequest(
            wallet_id=wallet_id, page_size=page_size, page_token=page_token
        )
        return self.call(self.wallets.ListWalletEvents, request, read=True, timeout=timeout)

    def freeze_wallet(
        self, wallet_id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> wallet_pb2.FreezeWalletResponse:
        request = wallet_pb2.FreezeWalletRequest(wallet_id=wallet_id, request_id=request_id or "")
        return self.call(self.wallets.FreezeWallet, request, timeout=timeout)

    def unfreeze_wallet(
        self, wallet_id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> wallet_pb2.UnfreezeWalletResponse:
        request = wallet_pb2.UnfreezeWalletRequest(wallet_id=wallet_id, request_id=request_id or "")
        return self.call(self.wallets.UnfreezeWallet, request, timeout=timeout)

    # --- TransferService --------------------------------------------------------------

    def create_transfer(
        self,
        from_wallet_id: str,
        to_wallet_id: str,
        amount: int,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> transfer_pb2.CreateTransferResponse:
        """Move ``amount`` between two wallets (a saga; see ``transfer.state``)."""
        request = transfer_pb2.CreateTransferRequest(
            request_id=request_id or "",
            from_wallet_id=from_wallet_id,
            to_wallet_id=to_wallet_id,
            amount=amount,
        )
        return self.call(self.transfers.CreateTransfer, request, timeout=timeout)

    def batch_create_transfers(
        self,
        items: Sequence[TransferItem],
        *,
        chunk_size: int = DEFAULT_CHUNK,
        timeout: float | None = None,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> list[TransferOutcome]:
        """Start many transfers with BatchCreateTransfers: one outcome per item, in order.

        Chunks of ``chunk_size``; every item keeps its ``request_id`` (a new key when
        empty) through every retry, so retrying is safe (see :mod:`wallet_client.batch`).
        """
        per_call = timeout or self.timeout

        def send(
            request: transfer_pb2.BatchCreateTransfersRequest, deadline: float
        ) -> transfer_pb2.BatchCreateTransfersResponse:
            return self.transfers.BatchCreateTransfers(
                request, timeout=deadline, metadata=self._metadata
            )

        return send_batches(
            send,
            items,
            new_key=new_request_id,
            policy=self.retry,
            timeout=per_call,
            chunk_size=chunk_size,
            on_chunk=on_chunk,
        )

    def get_transfer(
        self, transfer_id: str, *, timeout: float | None = None
    ) -> transfer_pb2.GetTransferResponse:
        request = transfer_pb2.GetTransferRequest(transfer_id=transfer_id)
        return self.call(self.transfers.GetTransfer, request, read=True, timeout=timeout)

    def list_transfers(
        self,
        *,
        wallet_id: str = "",
        state: transfer_pb2.TransferState = transfer_pb2.TRANSFER_STATE_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> transfer_pb2.ListTransfersResponse:
        """One page of transfers, optionally of one wallet or in one ``TransferState``."""
        request = transfer_pb2.ListTransfersRequest(
            wallet_id=wallet_id,
            state=state,
            page_size=page_size,
            page_token=page_token,
        )
        return self.call(self.transfers.ListTransfers, request, read=True, timeout=timeout)

    def get_transfer_summary(
        self, *, timeout: float | None = None
    ) -> transfer_pb2.GetTransferSummaryResponse:
        request = transfer_pb2.GetTransferSummaryRequest()
        return self.call(self.transfers.GetTransferSummary, request, read=True, timeout=timeout)

    def watch_transfers(
        self, *, transfer_id: str = "", wallet_id: str = "", timeout: float | None = None
    ) -> Iterator[transfer_pb2.WatchTransfersResponse]:
        """Transfer changes as they happen (a stream: not retried; no deadline unless given).

        Closing the iterator (or leaving a ``for`` loop over it early) cancels the call.
        """
        request = transfer_pb2.WatchTransfersRequest(transfer_id=transfer_id, wallet_id=wallet_id)
        stream = self.transfers.WatchTransfers(request, timeout=timeout, metadata=self._metadata)
        try:
            yield from stream
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            stream.cancel()

    # --- AnalyticsService and FraudService ----------------------------------------------

    def get_wallet_stats(
        self, wallet_id: str, *, timeout: float | None = None
    ) -> analytics_pb2.GetWalletStatsResponse:
        request = analytics_pb2.GetWalletStatsRequest(wallet_id=wallet_id)
        return self.call(self.analytics.GetWalletStats, request, read=True, timeout=timeout)

    def list_fraud_alerts(
        self,
        wallet_id: str = "",
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> fraud_pb2.ListFraudAlertsResponse:
        request = fraud_pb2.ListFraudAlertsRequest(
            wallet_id=wallet_id, page_size=page_size, page_token=page_token
        )
        return self.call(self.fraud.ListFraudAlerts, request, read=True, timeout=timeout)
