"""The WalletService gRPC servicer: protobuf in, one service call, protobuf out.

No rules live here. The service answers with domain objects; this edge maps them to
the RPC's response message (:mod:`wallet_service.messages`). The batch RPCs run each
item through these same methods (``grpc_batches``). Domain errors propagate to the
server's error mapping (``wallet_platform.server.builder.map_errors``), which turns
them into status codes with error details.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform.errors import InvalidArgumentError
from wallet_platform.observability.logs import log_context
from wallet_service.domain import Movement
from wallet_service.grpc_batches import BatchMethods
from wallet_service.messages import event_to_pb, response_to_pb, wallet_to_pb
from wallet_service.moves import MOVEMENT_METHODS
from wallet_service.service import WalletService

SERVICE_NAME = wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name

Context = Any  # grpc.aio.ServicerContext (grpc ships no type hints)
StepRequest = (
    wallet_pb2.DebitForTransferRequest
    | wallet_pb2.CreditForTransferRequest
    | wallet_pb2.RefundForTransferRequest
)
ResponseT = TypeVar("ResponseT", bound=Message)


def _as(response_type: type[ResponseT], message: Message) -> ResponseT:
    """``message`` as the RPC's declared response type (``messages`` builds it by name)."""
    if not isinstance(message, response_type):  # pragma: no cover - a table mismatch
        raise TypeError(f"expected {response_type.__name__}, built {type(message).__name__}")
    return message


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    """Translates ``wallet.v1.WalletService`` calls to :class:`WalletService`."""

    def __init__(self, service: WalletService) -> None:
        self._service = service
        self._batches = BatchMethods(
            self.Deposit,
            self.Withdraw,
            {
                "debit": self.DebitForTransfer,
                "credit": self.CreditForTransfer,
                "refund": self.RefundForTransfer,
            },
        )

    async def CreateWallet(
        self, request: wallet_pb2.CreateWalletRequest, context: Context
    ) -> wallet_pb2.CreateWalletResponse:
        with log_context(request_id=request.request_id):
            result = await self._service.create_wallet(
                request.wallet_id, request.currency, request.request_id
            )
        return _as(wallet_pb2.CreateWalletResponse, response_to_pb("CreateWallet", result))

    async def GetWallet(
        self, request: wallet_pb2.GetWalletRequest, context: Context
    ) -> wallet_pb2.GetWalletResponse:
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

    async def Deposit(
        self, request: wallet_pb2.DepositRequest, context: Context
    ) -> wallet_pb2.DepositResponse:
        with log_context(request_id=request.request_id):
            result = await self._service.deposit(
                request.wallet_id, request.amount, request.request_id
            )
        return _as(wallet_pb2.DepositResponse, response_to_pb("Deposit", result))

    async def Withdraw(
        self, request: wallet_pb2.WithdrawRequest, context: Context
    ) -> wallet_pb2.WithdrawResponse:
        with log_context(request_id=request.request_id):
            result = await self._service.withdraw(
                request.wallet_id, request.amount, request.request_id
            )
        return _as(wallet_pb2.WithdrawResponse, response_to_pb("Withdraw", result))

    async def ListWalletEvents(
        self, request: wallet_pb2.ListWalletEventsRequest, context: Context
    ) -> wallet_pb2.ListWalletEventsResponse:
        events, next_token = await self._service.list_events(
            request.wallet_id, request.page_size, request.page_token
        )
        return wallet_pb2.ListWalletEventsResponse(
            events=[event_to_pb(event) for event in events], next_page_token=next_token
        )

    async def FreezeWallet(
        self, request: wallet_pb2.FreezeWalletRequest, context: Context
    ) -> wallet_pb2.FreezeWalletResponse:
        with log_context(request_id=request.request_id):
            result = await self._service.set_frozen(
                request.wallet_id, request.request_id, freeze=True
            )
        return _as(wallet_pb2.FreezeWalletResponse, response_to_pb("FreezeWallet", result))

    async def UnfreezeWallet(
        self, request: wallet_pb2.UnfreezeWalletRequest, context: Context
    ) -> wallet_pb2.UnfreezeWalletResponse:
        with log_context(request_id=request.request_id):
            result = await self._service.set_frozen(
                request.wallet_id, request.request_id, freeze=False
            )
        return _as(wallet_pb2.UnfreezeWalletResponse, response_to_pb("UnfreezeWallet", result))

    async def DebitForTransfer(
        self, request: wallet_pb2.DebitForTransferRequest, context: Context
    ) -> wallet_pb2.DebitForTransferResponse:
        return _as(
            wallet_pb2.DebitForTransferResponse, await self._step(Movement.TRANSFER_DEBIT, request)
        )

    async def CreditForTransfer(
        self, request: wallet_pb2.CreditForTransferRequest, context: Context
    ) -> wallet_pb2.CreditForTransferResponse:
        return _as(
            wallet_pb2.CreditForTransferResponse,
            await self._step(Movement.TRANSFER_CREDIT, request),
        )

    async def RefundForTransfer(
        self, request: wallet_pb2.RefundForTransferRequest, context: Context
    ) -> wallet_pb2.RefundForTransferResponse:
        return _as(
            wallet_pb2.RefundForTransferResponse,
            await self._step(Movement.TRANSFER_REFUND, request),
        )

    async def BatchDeposit(
        self, request: wallet_pb2.BatchDepositRequest, context: Context
    ) -> wallet_pb2.BatchDepositResponse:
        return await self._batches.deposit(request, context)

    async def BatchWithdraw(
        self, request: wallet_pb2.BatchWithdrawRequest, context: Context
    ) -> wallet_pb2.BatchWithdrawResponse:
        return await self._batches.withdraw(request, context)

    async def BatchApplyTransferSteps(
        self, request: wallet_pb2.BatchApplyTransferStepsRequest, context: Context
    ) -> wallet_pb2.BatchApplyTransferStepsResponse:
        return await self._batches.apply_steps(request, context)

    async def _step(self, movement: Movement, request: StepRequest) -> Message:
        # Only the debit request has a destination (the hold's); the others read it
        # from the hold.
        to_wallet_id = getattr(request, "to_wallet_id", "")
        with log_context(request_id=request.request_id, transfer_id=request.transfer_id):
            result = await self._service.move(
                movement,
                request.wallet_id,
                request.amount,
                request.request_id,
                transfer_id=request.transfer_id,
                currency=request.currency,
                to_wallet_id=to_wallet_id,
            )
        return response_to_pb(MOVEMENT_METHODS[movement], result)


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.error = error


def _lenient(message_type: type[Message]) -> Callable[[bytes], Any]:
    """A deserializer that never raises (gRPC would answer UNKNOWN with internals)."""

    def deserialize(body: bytes) -> Any:
        try:
            return message_type.FromString(body)
        except (DecodeError, ValueError, UnicodeDecodeError) as error:
            return _Undecodable(message_type.DESCRIPTOR.full_name, error)

    return deserialize


def _guarded(behaviour: Callable[[Any, Context], Any]) -> Callable[[Any, Context], Any]:
    async def call(request: Any, context: Context) -> Any:
        if isinstance(request, _Undecodable):
            raise InvalidArgumentError(
                f"request body is not a valid {request.type_name} (e.g. bad UTF-8 in a string)"
            )
        return await behaviour(request, context)

    return call


def add_to_server(servicer: WalletServicer, server: grpc.aio.Server) -> None:
    """Register the servicer like the generated helper, but with tolerant decoding.

    Malformed request bytes then become INVALID_ARGUMENT through the one error
    interceptor, like any other bad input.
    """
    service = wallet_pb2.DESCRIPTOR.services_by_name["WalletService"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(wallet_pb2, method.input_type.name)
        response_type = getattr(wallet_pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, method.name)),
            request_deserializer=_lenient(request_type),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
