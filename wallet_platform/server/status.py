"""Domain errors as gRPC statuses: the one place the platform's errors meet grpc.

:mod:`wallet_platform.errors` names each error's canonical code (a ``google.rpc.Code``
name) and reason without knowing any transport; this module turns an error into a
``grpc.StatusCode`` and a ``google.rpc.Status`` carrying a ``google.rpc.ErrorInfo``
(the reason, domain ``wallet.v1``, the field), for bad input a
``google.rpc.BadRequest``, and for an error worth retrying (``UNAVAILABLE``,
``RESOURCE_EXHAUSTED`` from a limit) a ``google.rpc.RetryInfo`` whose ``retry_delay``
says how long to wait first (the error's ``retry_after``). The same
``google.rpc.Status`` message is what a batch RPC returns for a refused item, so a
single call and a batch item fail identically.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from wallet_platform.errors import InvalidArgumentError, WalletPlatformError

ERROR_DOMAIN = "wallet.v1"


def grpc_code(error: WalletPlatformError) -> grpc.StatusCode:
    """The gRPC status code of ``error`` (from its canonical code name)."""
    return grpc.StatusCode[error.code_name]


def status_proto(error: WalletPlatformError) -> status_pb2.Status:
    """``error`` as a ``google.rpc.Status`` with ErrorInfo and, for bad input, BadRequest."""
    info = error_details_pb2.ErrorInfo(reason=error.error_reason, domain=ERROR_DOMAIN)
    if error.field:
        info.metadata["field"] = error.field
    details = [_packed(info)]
    if isinstance(error, InvalidArgumentError) and error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.message
        )
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    if error.retry_after is not None:
        details.append(_packed(retry_info(error.retry_after)))
    return status_pb2.Status(code=grpc_code(error).value[0], message=error.message, details=details)


def internal_status() -> status_pb2.Status:
    """The status of an unexpected failure (a bug): no detail leaves the server."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    """A ``google.rpc.RetryInfo`` asking the client to wait ``seconds`` before retrying."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(round(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def rich_status(error: WalletPlatformError) -> grpc.Status:
    """The status a call that failed with ``error`` ends with."""
    return rpc_status.to_status(status_proto(error))


def status_reason(status: status_pb2.Status) -> str:
    """The ErrorInfo reason of a ``google.rpc.Status`` (its code's name without one)."""
    reason = info_reason(status)
    return reason if reason is not None else str(code_pb2.Code.Name(status.code))


def error_reason(call_error: grpc.aio.AioRpcError | grpc.RpcError) -> str | None:
    """The ErrorInfo reason of a failed call, for clients that classify errors."""
    status = rpc_status.from_call(call_error)
    return None if status is None else info_reason(status)


def info_reason(status: status_pb2.Status) -> str | None:
    """The ErrorInfo reason of a ``google.rpc.Status`` (a failed call's, or a batch
    item's error), so a batch item is classified exactly as the single call."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return None


def retry_delay(call_error: grpc.aio.AioRpcError | grpc.RpcError) -> float | None:
    """The RetryInfo delay (seconds) of a failed call, for the platform's own clients."""
    if not callable(getattr(call_error, "trailing_metadata", None)):
        return None  # not a finished call
    try:
        status = rpc_status.from_call(call_error)
    except ValueError:  # details that contradict the call's own status
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0.0, info.retry_delay.ToNanoseconds() / 1e9)
    return None


def _packed(
    message: error_details_pb2.ErrorInfo
    | error_details_pb2.BadRequest
    | error_details_pb2.RetryInfo,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
