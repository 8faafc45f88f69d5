"""``wallet.v1.TransferService`` over gRPC: protobuf <-> domain, nothing else.

Errors are raised as domain errors; the server's error mapping
(``wallet_platform.server.builder.map_errors``) turns them into status codes. A
BatchCreateTransfers item's error is answered in its result instead, as the
``google.rpc.Status`` ``wallet_platform.server.status`` makes of it (what the single
call would have ended with). WatchTransfers streams what the process's one change feed
(``saga_orchestrator.watch_feed``) hands its subscription.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator
from datetime import datetime

import grpc

from saga_orchestrator.batch import ItemOutcome, TransferRequest, create_transfers
from saga_orchestrator.mapping import PROTO_TO_STATE, STATE_TO_PROTO, timestamp, transfer_to_proto
from saga_orchestrator.service import TransferService
from saga_orchestrator.watch_feed import TransferFeed, WatchFilter
from wallet.v1 import transfer_pb2, transfer_pb2_grpc
from wallet_platform import page_tokens, validation
from wallet_platform.clock import ensure_utc, utcnow
from wallet_platform.errors import InvalidArgumentError
from wallet_platform.observability.audit import note_outcome
from wallet_platform.server.builder import error_status
from wallet_platform.server.status import status_reason

log = logging.getLogger(__name__)

TRANSFERS_LISTING = "transfers"


def _decode_cursor(token: str, filters: page_tokens.Filters) -> tuple[datetime, str] | None:
    """The previous page's last (created_at, transfer_id), from a token of ``filters``."""
    position = page_tokens.redeem(token, TRANSFERS_LISTING, filters, {"c": str, "t": str})
    if position is None:
        return None
    try:
        return ensure_utc(datetime.fromisoformat(str(position["c"]))), str(position["t"])
    except (ValueError, OverflowError):  # not a time, or one UTC cannot hold
        raise InvalidArgumentError("page_token is malformed", field="page_token") from None


_BATCH_METHOD = "/wallet.v1.TransferService/BatchCreateTransfers"


def _result(outcome: ItemOutcome) -> transfer_pb2.BatchCreateTransfersResult:
    """One item's result: the single call's response, or the status it would end with."""
    if isinstance(outcome, Exception):
        return transfer_pb2.BatchCreateTransfersResult(error=error_status(outcome, _BATCH_METHOD))
    transfer, replayed = outcome
    return transfer_pb2.BatchCreateTransfersResult(
        response=transfer_pb2.CreateTransferResponse(
            transfer=transfer_to_proto(transfer), replayed=replayed
        )
    )


def _encode_cursor(after: tuple[datetime, str] | None, filters: page_tokens.Filters) -> str:
    if after is None:
        return ""
    position = {"c": after[0].isoformat(), "t": after[1]}
    return page_tokens.issue(TRANSFERS_LISTING, filters, position)


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    def __init__(self, service: TransferService, feed: TransferFeed) -> None:
        self.service = service
        self.feed = feed

    async def CreateTransfer(
        self, request: transfer_pb2.CreateTransferRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.CreateTransferResponse:
        transfer, replayed = await self.service.create_transfer(
            request.request_id, request.from_wallet_id, request.to_wallet_id, request.amount
        )
        return transfer_pb2.CreateTransferResponse(
            transfer=transfer_to_proto(transfer), replayed=replayed
        )

    async def BatchCreateTransfers(
        self,
        request: transfer_pb2.BatchCreateTransfersRequest,
        context: grpc.aio.ServicerContext,
    ) -> transfer_pb2.BatchCreateTransfersResponse:
        outcomes = await create_transfers(
            self.service,
            [
                TransferRequest(r.request_id, r.from_wallet_id, r.to_wallet_id, r.amount)
                for r in request.requests
            ],
        )
        results = [_result(outcome) for outcome in outcomes]
        refused = collections.Counter(
            status_reason(r.error) for r in results if r.WhichOneof("result") == "error"
        )
        if refused:
            reasons = ", ".join(f"{reason} x{count}" for reason, count in sorted(refused.items()))
            note_outcome(f"{refused.total()} of {len(results)} items refused: {reasons}")
        return transfer_pb2.BatchCreateTransfersResponse(results=results)

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
        filters: page_tokens.Filters = {"state": int(request.state), "wallet_id": request.wallet_id}
        page = await self.service.list_transfers(
            state=state,
            wallet_id=request.wallet_id,
            page_size=request.page_size,
            after=_decode_cursor(request.page_token, filters),
        )
        return transfer_pb2.ListTransfersResponse(
            transfers=[transfer_to_proto(t) for t in page.transfers],
            next_page_token=_encode_cursor(page.next_after, filters),
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
        wanted = WatchFilter(transfer_id=request.transfer_id, wallet_id=request.wallet_id)
        async with self.feed.subscribe(wanted) as changes:
            # The response headers say "subscribed": every later change reaches this
            # stream (clients and tests wait for them instead of sleeping).
            await context.send_initial_metadata(())
            async for transfer in changes:
                yield transfer_pb2.WatchTransfersResponse(transfer=transfer_to_proto(transfer))
