"""Caps on concurrent calls, counted in one place for every server.

One :class:`CallLimiter` per server process, applied to every method by the plumbing
interceptor (``wallet_platform.server.plumbing``), keeps two separate budgets:

- **server streams** (``WatchTransfers``, health ``Watch``, reflection): at most
  ``WALLET_MAX_STREAMS`` open in the process and ``WALLET_MAX_STREAMS_PER_CONNECTION``
  on one client connection (told apart by the peer address). Each stream holds its
  slot until it ends for any reason (finished, client cancel, deadline, server stop);
- **unary calls** in flight: at most ``WALLET_MAX_UNARY_CALLS``. Health ``Check``
  is never refused (``rpc_policy``: not ``capped``), so probes answer under load.

Past a cap a new call ends at once with RESOURCE_EXHAUSTED and ErrorInfo reason
``TOO_MANY_STREAMS`` or ``TOO_MANY_CALLS``. The budgets are separate on purpose:
grpc's own ``maximum_concurrent_rpcs`` counts unary calls and streams together, so a
flood of streams could take every slot and starve the unary calls; here no number of
streams takes anything from the unary budget.
"""

from __future__ import annotations

from typing import Any

import grpc

from wallet_platform.errors import ResourceExhaustedError
from wallet_platform.observability.limit_metrics import LIMIT_REFUSALS, OPEN_STREAMS
from wallet_platform.server.builder import abort_with
from wallet_platform.server.handlers import responses, with_behaviour
from wallet_platform.server.limits import ServerLimits
from wallet_platform.server.rpc_policy import policy


class TooManyStreamsError(ResourceExhaustedError):
    reason = "TOO_MANY_STREAMS"
    retry_after = 5.0  # streams are long-lived: a slot frees up slowly


class TooManyCallsError(ResourceExhaustedError):
    reason = "TOO_MANY_CALLS"
    retry_after = 0.5  # unary calls end within their deadlines: slots free up fast


class CallLimiter:
    """Counts open server streams (per process and per connection) and unary calls."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.open_streams = 0
        self.unary_in_flight = 0
        self._streams_by_peer: dict[str, int] = {}

    def streams_of(self, peer: str) -> int:
        """Streams open on the connection ``peer`` (e.g. ``ipv4:127.0.0.1:51234``)."""
        return self._streams_by_peer.get(peer, 0)

    def _open_stream(self, peer: str) -> ResourceExhaustedError | None:
        """Take a stream slot, or say why there is none."""
        if self.open_streams >= self.limits.max_streams:
            LIMIT_REFUSALS.labels("streams").inc()
            return TooManyStreamsError(
                f"too many open streams: this server allows {self.limits.max_streams} "
                "(WALLET_MAX_STREAMS); retry later"
            )
        on_connection = self._streams_by_peer.get(peer, 0)
        if on_connection >= self.limits.max_streams_per_connection:
            LIMIT_REFUSALS.labels("streams_per_connection").inc()
            return TooManyStreamsError(
                f"too many open streams on this connection: at most "
                f"{self.limits.max_streams_per_connection} "
                "(WALLET_MAX_STREAMS_PER_CONNECTION); close one first"
            )
        self.open_streams += 1
        self._streams_by_peer[peer] = on_connection + 1
        OPEN_STREAMS.inc()
        return None

    def _close_stream(self, peer: str) -> None:
        self.open_streams -= 1
        OPEN_STREAMS.dec()
        left = self._streams_by_peer[peer] - 1
        if left:
            self._streams_by_peer[peer] = left
        else:
            del self._streams_by_peer[peer]

    def _start_unary(self) -> ResourceExhaustedError | None:
        if self.unary_in_flight >= self.limits.max_unary_calls:
            LIMIT_REFUSALS.labels("unary_calls").inc()
            return TooManyCallsError(
                f"too many calls in flight: this server serves {self.limits.max_unary_calls} "
                "at once (WALLET_MAX_UNARY_CALLS); retry later"
            )
        self.unary_in_flight += 1
        return None

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` holding a slot of its budget while it runs (built once per method)."""
        if handler.response_streaming:
            return self._wrap_stream(handler)
        if not policy(method).capped:
            return handler
        return self._wrap_unary(handler)

    def _wrap_stream(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_stream or handler.stream_stream

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            peer = context.peer() or ""
            refused = self._open_stream(peer)
            if refused is not None:
                await abort_with(context, refused)
            try:
                async for item in responses(inner(request, context)):
                    yield item
            finally:  # also on cancel, deadline and server stop (CancelledError)
                self._close_stream(peer)

        return with_behaviour(handler, limited)

    def _wrap_unary(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary or handler.stream_unary

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refused = self._start_unary()
            if refused is not None:
                await abort_with(context, refused)
            try:
                return await inner(request, context)
            finally:
                self.unary_in_flight -= 1

        return with_behaviour(handler, limited)
