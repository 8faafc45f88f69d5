"""Counting and timing every RPC into the RED series of ``observability.rpc_metrics``.

:func:`measure` is the outermost layer of the server plumbing
(``wallet_platform.server.plumbing``), so it sees every call's final status, refusals by
auth, limits and audit included. It lives with the server, not with the metrics, because
it wraps gRPC method handlers; the series it feeds are observability's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from wallet_platform.observability.rpc_metrics import RPC_HANDLED, RPC_IN_FLIGHT, RPC_LATENCY
from wallet_platform.server.handlers import responses, with_behaviour


def split_method(method: str) -> tuple[str, str]:
    """``/wallet.v1.WalletService/Deposit`` -> (``wallet.v1.WalletService``, ``Deposit``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or method


def _code_name(context: grpc.aio.ServicerContext, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        name = code.name
        return "UNKNOWN" if failed and name == "OK" else name
    return "UNKNOWN" if failed else "OK"


class _MethodSeries:
    """One method's labelled series, looked up once (``labels()`` locks and hashes)."""

    def __init__(self, method: str) -> None:
        self.service, self.name = split_method(method)
        self.in_flight = RPC_IN_FLIGHT.labels(self.service, self.name)
        self._by_code: dict[str, tuple[Any, Any]] = {}

    def observe(self, context: grpc.aio.ServicerContext, started: float, outcome: str) -> None:
        code = "CANCELLED" if outcome == "cancelled" else _code_name(context, outcome != "ok")
        series = self._by_code.get(code)
        if series is None:
            series = (
                RPC_HANDLED.labels(self.service, self.name, code),
                RPC_LATENCY.labels(self.service, self.name, code),
            )
            self._by_code[code] = series
        series[0].inc()
        series[1].observe(time.perf_counter() - started)


def measure(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` counted and timed (unary and server-streaming); the outermost layer.

    Built once per method by the server's plumbing interceptor
    (``wallet_platform.server.plumbing``), so it sees every final status, refusals included.
    """
    series = _MethodSeries(method)
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            outcome = "failed"
            series.in_flight.inc()
            try:
                response = await inner_uu(request, context)
                outcome = "ok"
                return response
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                series.in_flight.dec()
                series.observe(context, started, outcome)

        return with_behaviour(handler, unary_unary)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            outcome = "failed"
            series.in_flight.inc()
            try:
                async for item in responses(inner_us(request, context)):
                    yield item
                outcome = "ok"
            except (asyncio.CancelledError, GeneratorExit):
                outcome = "cancelled"
                raise
            finally:
                series.in_flight.dec()
                series.observe(context, started, outcome)

        return with_behaviour(handler, unary_stream)
    return handler
