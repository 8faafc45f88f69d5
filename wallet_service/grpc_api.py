"""The WalletService gRPC servicer: protobuf in, one service call, protobuf out.

No rules live here. Domain errors propagate to ``grpc_server.ErrorInterceptor``,
which maps them to status codes with error details.
"""

from __future__ import annotations

from typing import Any

from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_common.errors import InvalidArgumentError
from wallet_common.logs import log_context
from wallet_service.domain import Movement
from wallet_service.messages import event_to_pb, wallet_to_pb
from wallet_service.service import WalletService

SERVICE_NAME = wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name

Context = Any  # grpc.aio.ServicerContext (grpc ships no type hints)


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    """Translates ``wallet.v1.WalletService`` calls to :class:`WalletService`."""

    def __init__(self, service: WalletService) -> None:
        self._service = service

    async def CreateWallet(self, request: Any, context: Context) -> Any:
        with log_context(request_id=request.request_id):
            return await self._service.create_wallet(
                request.wallet_id, request.currency, request.request_id
            )

    async def GetWallet(self, request: Any, context: Context) -> Any:
        as_of_time = None
        if request.HasField("as_of_time"):
            try:
                as_of_time = request.as_of_time.ToDatetime()
            except (ValueError, OverflowError):
                raise InvalidArgumentError(
                    "as_of_time is not a valid timestamp", field="as_of_time"
                ) from None
        wallet = await self._service.get_wallet(
            request.wallet_id, request.as_of_sequence, as_of_time
        )
        return wallet_pb2.GetWalletResponse(wallet=wallet_to_pb(wallet))

    async def Deposit(self, request: Any, context: Context) -> Any:
        with log_context(request_id=request.request_id):
            return await self._service.move(
                Movement.DEPOSIT, request.wallet_id, request.amount, request.request_id
            )

    async def Withdraw(self, request: Any, context: Context) -> Any:
        with log_context(request_id=request.request_id):
            return await self._service.move(
                Movement.WITHDRAW, request.wallet_id, request.amount, request.request_id
            )

    async def ListWalletEvents(self, request: Any, context: Context) -> Any:
        events, next_token = await self._service.list_events(
            request.wallet_id, request.page_size, request.page_token
        )
        return wallet_pb2.ListWalletEventsResponse(
            events=[event_to_pb(event) for event in events], next_page_token=next_token
        )

    async def FreezeWallet(self, request: Any, context: Context) -> Any:
        with log_context(request_id=request.request_id):
            return await self._service.set_frozen(
                request.wallet_id, request.request_id, freeze=True
            )

    async def UnfreezeWallet(self, request: Any, context: Context) -> Any:
        with log_context(request_id=request.request_id):
            return await self._service.set_frozen(
                request.wallet_id, request.request_id, freeze=False
            )

    async def DebitForTransfer(self, request: Any, context: Context) -> Any:
        return await self._step(Movement.TRANSFER_DEBIT, request)

    async def CreditForTransfer(self, request: Any, context: Context) -> Any:
        return await self._step(Movement.TRANSFER_CREDIT, request)

    async def RefundForTransfer(self, request: Any, context: Context) -> Any:
        return await self._step(Movement.TRANSFER_REFUND, request)

    async def _step(self, movement: Movement, request: Any) -> Any:
        with log_context(request_id=request.request_id, transfer_id=request.transfer_id):
            return await self._service.move(
                movement,
                request.wallet_id,
                request.amount,
                request.request_id,
                transfer_id=request.transfer_id,
                currency=request.currency,
            )
