"""Server spans for gRPC calls: the caller's ``traceparent`` metadata continued.

A small wrapper of the platform's own (one per method, like every layer of the
plumbing) rather than ``opentelemetry-instrumentation-grpc``: that package's
``grpc.aio`` server interceptor builds new handler objects on every call, which the
plumbing avoids on purpose (``WrappingInterceptor``, docs/benchmarks.md), and it
would add a second interceptor (and its per-call cost) to every server. Here the
wrapper is only installed while tracing is on, so tracing off costs nothing per call.

Span status follows the OpenTelemetry gRPC conventions for servers: only codes that
mean the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
UNAVAILABLE, DATA_LOSS) mark the span as an error; a refused request (NOT_FOUND,
INVALID_ARGUMENT, FAILED_PRECONDITION...) is a successful call that said no.
"""

from __future__ import annotations

from typing import Any

import grpc

from wallet_platform.observability import tracing
from wallet_platform.server.handlers import responses, with_behaviour

SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def incoming_traceparent(context: grpc.aio.ServicerContext) -> str | bytes | None:
    """The caller's ``traceparent`` metadata (the first one), or None."""
    for key, value in context.invocation_metadata() or ():
        if key == tracing.HEADER:
            return value
    return None


def _attributes(method: str) -> dict[str, Any]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _finish(span: Any, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
    if span is None:
        return
    code = context.code()
    if code is None:
        code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
    if isinstance(code, grpc.StatusCode):
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in SERVER_ERRORS:
            tracing.mark_error(span, code.name)


def traced(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` inside a SERVER span (the caller's trace, or a new one)."""
    name = method.lstrip("/")
    attributes = _attributes(method)
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with tracing.span(
                name,
                kind=tracing.SERVER,
                parent=incoming_traceparent(context),
                use_parent=True,
                attributes=attributes,
                record_errors=False,
            ) as span:
                error: BaseException | None = None
                try:
                    return await inner_uu(request, context)
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    _finish(span, context, error)

        return with_behaviour(handler, unary_unary)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # Not made current: a context attached across the generator's yields could
            # be detached in another context. Streams (Watch) are long-lived anyway.
            span = tracing.start_span(
                name,
                kind=tracing.SERVER,
                parent=incoming_traceparent(context),
                attributes=attributes,
            )
            error: BaseException | None = None
            try:
                async for item in responses(inner_us(request, context)):
                    yield item
            except BaseException as raised:
                error = raised
                raise
            finally:
                _finish(span, context, error)
                tracing.end_span(span)

        return with_behaviour(handler, unary_stream)
    return handler
