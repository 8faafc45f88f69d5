"""The gRPC server builder every process uses.

``create_server(listen, components)`` builds a ``grpc.aio.Server`` (not started yet)
bound to ``listen`` (port 0 in tests) and returns it with the bound port and its health
servicer. Every server gets gRPC health (``grpc.health.v1.Health``), server reflection,
and error mapping (:func:`map_errors`): servicers raise domain errors, and this one
place turns them into status codes with ``google.rpc`` details
(``wallet_platform.server.status``). The plumbing interceptor applies the mapping
itself; :class:`ErrorInterceptor` applies it after a server's own interceptors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from sqlalchemy.exc import DBAPIError

from wallet_platform.errors import UnavailableError, WalletPlatformError
from wallet_platform.server.handlers import responses, with_behaviour
from wallet_platform.server.status import internal_status, rich_status, status_proto
from wallet_platform.storage.connection_errors import is_connection_error

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class Component(Protocol):
    """A part of a process: gRPC services and/or background tasks."""

    name: str

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        """Register servicers; return their full service names (for health/reflection)."""
        ...

    async def start(self) -> None:
        """Start background work (relays, consumers, sweepers). Called after bind."""
        ...

    async def stop(self) -> None:
        """Stop background work and release resources. Called before the server stops."""
        ...


def platform_error(error: BaseException) -> WalletPlatformError | None:
    """``error`` as the platform error a caller is told (a lost database connection is
    UNAVAILABLE), or None for an unexpected one (answered INTERNAL)."""
    if isinstance(error, WalletPlatformError):
        return error
    if isinstance(error, DBAPIError | OSError) and is_connection_error(error):
        return UnavailableError("database unavailable, retry later")
    return None


def _keep_trailers(context: grpc.aio.ServicerContext, status: Any) -> Any:
    """abort_with_status replaces trailing metadata: keep what was set (x-audit-id)."""
    already = tuple(context.trailing_metadata() or ())
    if not already:
        return status
    return status._replace(trailing_metadata=(*status.trailing_metadata, *already))


async def abort_with(context: grpc.aio.ServicerContext, error: WalletPlatformError) -> None:
    """End the call with ``error``'s status and details, keeping trailers set so far.

    For layers that refuse a call outside the error mapping (limits, audit backlog).
    """
    await context.abort_with_status(_keep_trailers(context, rich_status(error)))


def error_status(error: BaseException, method: str) -> status_pb2.Status:
    """The ``google.rpc.Status`` a call of ``method`` that raised ``error`` ends with.

    Also the result of a refused batch item (``wallet_service.grpc_batches``), so an
    item fails exactly like its single call: a domain error with its code and details,
    a lost database connection as UNAVAILABLE, anything else as a bare INTERNAL (logged
    here, never shown to the caller).
    """
    translated = platform_error(error)
    if translated is None:
        log.exception("unhandled error in %s", method, exc_info=error)
        return internal_status()
    if translated.error_reason == "UNAVAILABLE":  # a dependency is down (not a server stop)
        log.warning("%s: %s", method, translated.message)
    return status_proto(translated)


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    status = rpc_status.to_status(error_status(error, method))
    await context.abort_with_status(_keep_trailers(context, status))


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps each method's handler once and reuses the result.

    grpc.aio asks every interceptor for the handler on every call. Building new
    closures and handler objects per call (and a chain of interceptors doing so) cost
    measurable CPU per request (docs/benchmarks.md), so subclasses only say how to wrap
    a handler (:meth:`wrap`, which must not depend on the call: per-call data such as
    metadata is read from the ``context`` inside the wrapped behaviour) and the wrapped
    handler is cached per method. A handler object the server has not returned before
    (it never changes for registered services) is wrapped afresh.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self.wrap(method, handler))
            self._wrapped[method] = cached
        return cached[1]


def map_errors(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with exceptions mapped to gRPC statuses (unary and server-streaming)."""
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner_uu(request, context)
            except Exception as error:
                if _is_abort(error):
                    raise
                await _abort(context, error, method)

        return with_behaviour(handler, unary_unary)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in responses(inner_us(request, context)):
                    yield item
            except Exception as error:
                if _is_abort(error):
                    raise
                await _abort(context, error, method)

        return with_behaviour(handler, unary_stream)
    return handler


class ErrorInterceptor(WrappingInterceptor):
    """Maps exceptions from servicers to gRPC statuses; nothing else does.

    Servers with the platform's plumbing get the same mapping inside its one
    interceptor (``wallet_platform.server.plumbing``) instead.
    """

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return map_errors(method, handler)


def _is_abort(error: BaseException) -> bool:
    # context.abort() raises grpc.aio's AbortError; it must pass through untouched.
    return type(error).__name__ in ("AbortError", "_AbortError") or isinstance(
        error, grpc.aio.AbortError
    )


def server_credentials(settings: Any) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when a client CA is given) from the settings; None = plaintext.

    A half-configured TLS setting refuses to start rather than silently serving plaintext.
    """
    if not getattr(settings, "tls_cert", ""):
        if getattr(settings, "tls_key", "") or getattr(settings, "tls_client_ca", ""):
            raise SystemExit("WALLET_TLS_KEY / WALLET_TLS_CLIENT_CA need WALLET_TLS_CERT")
        return None
    if not settings.tls_key:
        raise SystemExit("WALLET_TLS_CERT needs WALLET_TLS_KEY")
    with open(settings.tls_cert, "rb") as handle:
        cert = handle.read()
    with open(settings.tls_key, "rb") as handle:
        key = handle.read()
    client_ca = None
    if settings.tls_client_ca:
        with open(settings.tls_client_ca, "rb") as handle:
            client_ca = handle.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def create_server(
    listen: str,
    components: Sequence[Component],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    reuse_port: bool = False,
    error_mapping: bool = True,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build a server with every component, health and reflection; bind ``listen``.

    Returns the server (not yet started), the bound port and the health servicer
    (every service NOT_SERVING until the caller says otherwise with ``set_health``).
    ``SO_REUSEPORT`` only with ``reuse_port`` (``--workers N``): otherwise a second copy
    started by mistake on the same port must fail instead of silently sharing it.
    ``error_mapping=False`` when the last of ``interceptors`` maps errors itself.
    """
    server = grpc.aio.server(
        interceptors=[*interceptors, ErrorInterceptor()] if error_mapping else [*interceptors],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *options,
        ],
    )
    service_names: list[str] = []
    for component in components:
        service_names.extend(component.add_to_server(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError:  # grpc's way of saying the bind failed
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {listen}: address in use or not available")
    for name in [*service_names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, port, health_servicer


async def set_health(
    health_servicer: health.aio.HealthServicer, serving: bool, names: Sequence[str] = ("",)
) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in names:
        await health_servicer.set(name, status)
