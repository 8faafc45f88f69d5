"""``wallet.v1.TransferService`` over gRPC: protobuf <-> domain, nothing else.

Errors are raised as domain errors; ``wallet_platform.server.builder.ErrorInterceptor``
maps them to status codes. WatchTransfers merges two sources: the in-process notifier
(changes this replica made, pushed at once) and a poll of the transfers table (changes
other replicas made). A per-stream memory of the last state sent per transfer keeps
the stream free of duplicates and never lets a transfer appear to go backwards.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import grpc

from saga_orchestrator.domain import Transfer, TransferState
from saga_orchestrator.mapping import PROTO_TO_STATE, STATE_TO_PROTO, timestamp, transfer_to_proto
from saga_orchestrator.notifier import TransferNotifier
from saga_orchestrator.repository import TransferRepository
from saga_orchestrator.service import TransferService
from wallet.v1 import transfer_pb2, transfer_pb2_grpc
from wallet_platform import validation
from wallet_platform.clock import utcnow
from wallet_platform.errors import InvalidArgumentError

# How often a watch stream looks for changes made by other replicas, and how far back
# each look reaches (covers commit delays and small clock differences between replicas).
WATCH_POLL_SECONDS = 1.0
WATCH_POLL_OVERLAP = timedelta(seconds=3)
WATCH_MEMORY = 10_000
WATCH_POLL_BATCH = 500

# Progress order: a watcher never sees a transfer step back.
_RANK = {
    TransferState.PENDING: 0,
    TransferState.DEBITED: 1,
    TransferState.COMPENSATING: 2,
    TransferState.COMPLETED: 3,
    TransferState.FAILED: 3,
    TransferState.COMPENSATED: 3,
}


def _decode_cursor(token: str) -> tuple[datetime, str] | None:
    position = validation.decode_page_token(token)
    if position is None:
        return None
    try:
        return datetime.fromisoformat(position["c"]), str(position["t"])
    except (KeyError, TypeError, ValueError):
        raise InvalidArgumentError("page_token is malformed", field="page_token") from None


def _encode_cursor(after: tuple[datetime, str] | None) -> str:
    if after is None:
        return ""
    return validation.encode_page_token({"c": after[0].isoformat(), "t": after[1]})


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    def __init__(
        self,
        service: TransferService,
        repository: TransferRepository,
        notifier: TransferNotifier,
    ) -> None:
        self.service = service
        self.repository = repository
        self.notifier = notifier

    async def CreateTransfer(
        self, request: transfer_pb2.CreateTransferRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.CreateTransferResponse:
        transfer, replayed = await self.service.create_transfer(
            request.request_id, request.from_wallet_id, request.to_wallet_id, request.amount
        )
        return transfer_pb2.CreateTransferResponse(
            transfer=transfer_to_proto(transfer), replayed=replayed
        )

    async def GetTransfer(
        self, request: transfer_pb2.GetTransferRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.GetTransferResponse:
        transfer = await self.service.get_transfer(request.transfer_id)
        return transfer_pb2.GetTransferResponse(transfer=transfer_to_proto(transfer))

    async def ListTransfers(
        self, request: transfer_pb2.ListTransfersRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.ListTransfersResponse:
        state = None
        if request.state != transfer_pb2.TRANSFER_STATE_UNSPECIFIED:
            state = PROTO_TO_STATE.get(request.state)
            if state is None:
                raise InvalidArgumentError(f"unknown state {request.state}", field="state")
        page = await self.service.list_transfers(
            state=state,
            wallet_id=request.wallet_id,
            page_size=request.page_size,
            after=_decode_cursor(request.page_token),
        )
        return transfer_pb2.ListTransfersResponse(
            transfers=[transfer_to_proto(t) for t in page.transfers],
            next_page_token=_encode_cursor(page.next_after),
        )

    async def GetTransferSummary(
        self, request: transfer_pb2.GetTransferSummaryRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.GetTransferSummaryResponse:
        summary = await self.service.summary()
        now = utcnow()
        response = transfer_pb2.GetTransferSummaryResponse(
            counts=[
                transfer_pb2.TransferStateCount(
                    state=STATE_TO_PROTO[c.state],  # type: ignore[arg-type]
                    count=c.count,
                )
                for c in summary.counts
            ],
            unfinished=summary.unfinished,
        )
        if summary.oldest_unfinished is not None:
            oldest = summary.oldest_unfinished
            response.oldest_unfinished_transfer_id = oldest.transfer_id
            response.oldest_unfinished_age_seconds = max(
                0.0, (now - oldest.created_at).total_seconds()
            )
        for transfer in summary.retrying:
            entry = response.retrying.add(
                transfer_id=transfer.transfer_id,
                state=STATE_TO_PROTO[transfer.state],
                attempts=transfer.attempts,
                last_error=transfer.last_error,
            )
            if transfer.next_attempt_at is not None:
                entry.next_attempt_at.CopyFrom(timestamp(transfer.next_attempt_at))
        return response

    async def WatchTransfers(
        self, request: transfer_pb2.WatchTransfersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.WatchTransfersResponse]:
        if request.transfer_id:
            validation.transfer_id(request.transfer_id)
        if request.wallet_id:
            validation.wallet_id(request.wallet_id)

        def wanted(transfer: Transfer) -> bool:
            if request.transfer_id and transfer.transfer_id != request.transfer_id:
                return False
            return not request.wallet_id or transfer.involves(request.wallet_id)

        sent: collections.OrderedDict[str, int] = collections.OrderedDict()

        def is_news(transfer: Transfer) -> bool:
            rank = _RANK[transfer.state]
            previous = sent.get(transfer.transfer_id)
            if previous is not None and previous >= rank:
                return False
            sent[transfer.transfer_id] = rank
            sent.move_to_end(transfer.transfer_id)
            while len(sent) > WATCH_MEMORY:
                sent.popitem(last=False)
            return True

        with self.notifier.subscribe() as queue:
            since = utcnow() - WATCH_POLL_OVERLAP
            # What the overlap window already holds happened before this stream began:
            # remember it without sending it, so only later progress is streamed.
            for transfer in await self.repository.changed_since(since):
                is_news(transfer)
            next_poll = time.monotonic() + WATCH_POLL_SECONDS
            while True:
                pending: list[Transfer] = []
                timeout = next_poll - time.monotonic()
                if timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        pending.append(await asyncio.wait_for(queue.get(), timeout))
                    while not queue.empty():
                        pending.append(queue.get_nowait())
                else:
                    poll_started = utcnow()
                    batch = await self.repository.changed_since(since, WATCH_POLL_BATCH)
                    pending.extend(batch)
                    if len(batch) >= WATCH_POLL_BATCH and batch[-1].updated_at > since:
                        # More changed than one batch: continue from the last one at once.
                        since = batch[-1].updated_at
                        next_poll = time.monotonic()
                    else:
                        since = poll_started - WATCH_POLL_OVERLAP
                        next_poll = time.monotonic() + WATCH_POLL_SECONDS
                for transfer in pending:
                    if wanted(transfer) and is_news(transfer):
                        yield transfer_pb2.WatchTransfersResponse(
                            transfer=transfer_to_proto(transfer)
                        )
