"""The orchestrator's only way to WalletService, behind a small protocol.

``GrpcWalletGateway`` turns gRPC calls and their failures into the domain's terms:
a step either returns or raises :class:`StepFailedError` carrying a
:class:`~saga_orchestrator.domain.StepError` (status code name + ErrorInfo reason).
``apply_steps`` sends many steps as one BatchApplyTransferSteps call and maps each
item's result to exactly what its single call gives (``step_batcher`` uses it).
Tests of the state machine plug in a fake that implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.rpc import code_pb2, status_pb2

from saga_orchestrator.domain import StepName
from saga_orchestrator.step_errors import StepError
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform.observability import tracing
from wallet_platform.server.status import error_reason, info_reason

# Each saga step and the WalletService RPC that performs it (one request shape, plus the
# debit's destination).
_STEP_RPCS: dict[StepName, tuple[str, type[Any]]] = {
    StepName.DEBIT: ("DebitForTransfer", wallet_pb2.DebitForTransferRequest),
    StepName.CREDIT: ("CreditForTransfer", wallet_pb2.CreditForTransferRequest),
    StepName.REFUND: ("RefundForTransfer", wallet_pb2.RefundForTransferRequest),
}


class StepFailedError(Exception):
    """A WalletService call did not succeed; ``error`` says how (classified by domain)."""

    def __init__(self, error: StepError) -> None:
        super().__init__(error.describe())
        self.error = error


@dataclass(frozen=True)
class StepCall:
    """Everything one step call needs; the same values on every retry."""

    step: StepName
    wallet_id: str
    amount: int
    transfer_id: str
    request_id: str
    currency: str
    to_wallet_id: str = ""  # the debit's destination (the hold's); empty on other steps


@dataclass(frozen=True)
class WalletInfo:
    wallet_id: str
    currency: str
    frozen: bool


class WalletGateway(Protocol):
    async def call_step(self, call: StepCall, deadline: float) -> bool:
        """Apply the step; returns ``replayed``. Raises StepFailedError on any failure."""
        ...

    async def get_wallet(self, wallet_id: str, deadline: float) -> WalletInfo:
        """Read a wallet (currency check before a transfer). Raises StepFailedError."""
        ...


def step_error_from_rpc(error: grpc.aio.AioRpcError, *, whole_batch: bool = False) -> StepError:
    code = error.code()
    return StepError(
        code=code.name if code is not None else "UNKNOWN",
        reason=error_reason(error) or "",
        message=error.details() or "",
        whole_batch=whole_batch,
    )


def step_error_from_status(status: status_pb2.Status) -> StepError:
    """A batch item's error, classified exactly as the single call's failure would be:
    the same status code name and the same ErrorInfo reason."""
    try:
        code = code_pb2.Code.Name(status.code)
    except ValueError:  # a code this client does not know: unknown, hence transient
        code = "UNKNOWN"
    return StepError(code=code, reason=info_reason(status) or "", message=status.message)


def step_request(call: StepCall) -> Any:
    """The single step RPC's request for ``call`` (also a batch operation's content)."""
    _, request_type = _STEP_RPCS[call.step]
    request = request_type(
        wallet_id=call.wallet_id,
        amount=call.amount,
        transfer_id=call.transfer_id,
        request_id=call.request_id,
        currency=call.currency,
    )
    if call.step is StepName.DEBIT:
        request.to_wallet_id = call.to_wallet_id
    return request


def step_operation(call: StepCall) -> wallet_pb2.StepOperation:
    operation = wallet_pb2.StepOperation()
    getattr(operation, call.step.value).CopyFrom(step_request(call))
    return operation


# A batched step's outcome: ``replayed`` on success, else the item's classified error.
StepOutcome = bool | StepError


def step_outcome(call: StepCall, result: wallet_pb2.StepOperationResult) -> StepOutcome:
    """What the single call would have given for ``call``, read from its batch result.

    A result of another kind than the operation (or none) is a malformed answer: the
    step's outcome is unknown, so it is reported as a transient error.
    """
    kind = result.WhichOneof("result")
    if kind == "error":
        return step_error_from_status(result.error)
    if kind != call.step.value:
        return StepError(
            code="UNKNOWN",
            reason="",
            message=f"batch result for a {call.step.value} step holds {kind or 'nothing'}",
        )
    return bool(getattr(result, kind).replayed)


class GrpcWalletGateway:
    """Real WalletService over one shared channel (created lazily inside the loop).

    ``metadata`` (e.g. :class:`wallet_platform.channels.CallMetadata`), when given, is
    called for every call and its result sent as the call's metadata: the orchestrator
    opens its channel without the metadata interceptor and attaches the token and audit
    id here, which saves grpc.aio's per-call interceptor task (docs/benchmarks.md).
    """

    def __init__(
        self,
        channel_factory: Callable[[], grpc.aio.Channel],
        metadata: Callable[[], Sequence[tuple[str, str]]] | None = None,
    ) -> None:
        self._channel_factory = channel_factory
        self._metadata = metadata
        self._channel: grpc.aio.Channel | None = None
        self._stub: wallet_pb2_grpc.WalletServiceStub | None = None

    def _get_stub(self) -> wallet_pb2_grpc.WalletServiceStub:
        # grpc.aio binds a channel to the running loop: create it on first use.
        if self._stub is None:
            self._channel = self._channel_factory()
            self._stub = wallet_pb2_grpc.WalletServiceStub(self._channel)
        return self._stub

    def _call_metadata(self) -> Sequence[tuple[str, str]] | None:
        return None if self._metadata is None else self._metadata()

    async def call_step(self, call: StepCall, deadline: float) -> bool:
        method_name, _ = _STEP_RPCS[call.step]
        method = getattr(self._get_stub(), method_name)
        request = step_request(call)
        if not tracing.enabled():
            return await self._step(method, request, deadline, self._call_metadata())
        with tracing.span(
            f"saga step {call.step.value}",
            kind=tracing.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "wallet.v1.WalletService",
                "rpc.method": method_name,
                "wallet.transfer.id": call.transfer_id,
            },
        ) as span:
            try:
                # The step span's traceparent: WalletService continues the trace.
                metadata = tracing.outgoing_metadata(self._call_metadata())
                return await self._step(method, request, deadline, metadata)
            except StepFailedError as failed:
                tracing.mark_error(span, failed.error.code)
                raise

    @staticmethod
    async def _step(method: Any, request: Any, deadline: float, metadata: Any) -> bool:
        try:
            response = await method(request, timeout=deadline, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            raise StepFailedError(step_error_from_rpc(error)) from None
        return bool(response.replayed)

    async def apply_steps(self, calls: Sequence[StepCall], deadline: float) -> list[StepOutcome]:
        """One BatchApplyTransferSteps call for ``calls`` (of distinct transfers).

        Each outcome is mapped as the single call's (``step_outcome``); a failure of the
        call as a whole raises StepFailedError with a ``whole_batch`` error (transient
        for every step). A batch ignores ``x-audit-id``: the server gives each item its own.
        """
        request = wallet_pb2.BatchApplyTransferStepsRequest(
            operations=[step_operation(call) for call in calls]
        )
        try:
            response = await self._get_stub().BatchApplyTransferSteps(
                request, timeout=deadline, metadata=self._call_metadata()
            )
        except grpc.aio.AioRpcError as error:
            raise StepFailedError(step_error_from_rpc(error, whole_batch=True)) from None
        if len(response.results) != len(calls):
            raise StepFailedError(
                StepError(
                    code="INTERNAL",
                    reason="",
                    message=f"{len(response.results)} results for {len(calls)} steps",
                    whole_batch=True,
                )
            )
        return [
            step_outcome(call, result) for call, result in zip(calls, response.results, strict=True)
        ]

    async def get_wallet(self, wallet_id: str, deadline: float) -> WalletInfo:
        stub = self._get_stub()
        try:
            response = await stub.GetWallet(
                wallet_pb2.GetWalletRequest(wallet_id=wallet_id),
                timeout=deadline,
                metadata=self._call_metadata(),
            )
        except grpc.aio.AioRpcError as error:
            raise StepFailedError(step_error_from_rpc(error)) from None
        wallet = response.wallet
        return WalletInfo(
            wallet_id=wallet.wallet_id,
            currency=wallet.currency,
            frozen=wallet.status == wallet_pb2.WALLET_STATUS_FROZEN,
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
