"""What every server gets besides its own components: metrics, audit and auth.

``process.start_server`` builds one :class:`ServerPlumbing` per process, installs its
interceptors in front of the service's own, starts it before the server accepts
calls and stops it after the server has drained (so the audit rows of the last calls
are written before the database closes).

All of it is ONE interceptor (:class:`PlumbingInterceptor`) whose layers wrap each
method's handler once, cached per method (``builder.WrappingInterceptor``): four
interceptors building closures and handler objects on every call cost measurable CPU
per request (docs/benchmarks.md). Layer order (outermost first): metrics (sees every
final status), audit (records refused calls too), call limits (streams and unary calls
in flight, ``call_limits``), auth (refuses before servicer code runs), then error
mapping (domain errors -> status codes with details). When a service adds interceptors
of its own they go between auth and the error mapping.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from wallet_platform.observability import tracing
from wallet_platform.observability.audit import AuditWriter
from wallet_platform.observability.metrics import MetricsHttpServer
from wallet_platform.observability.state_metrics import StateCollector, state_sources
from wallet_platform.server.audit_calls import audit
from wallet_platform.server.authority import Authority, authority_from_settings
from wallet_platform.server.builder import WrappingInterceptor, map_errors
from wallet_platform.server.call_limits import CallLimiter
from wallet_platform.server.limits import ServerLimits
from wallet_platform.server.rpc_metrics import measure
from wallet_platform.server.security import guard
from wallet_platform.server.tracing import traced

if TYPE_CHECKING:
    from wallet_platform.runtime import Runtime

log = logging.getLogger(__name__)

AUDIT_WRITER = "audit_writer"  # runtime.extras key (tests flush it)
METRICS_HTTP = "metrics_http"  # runtime.extras key (tests read the bound port)
CALL_LIMITER = "call_limiter"  # runtime.extras key (tests read the stream counts)
MIN_AUDIT_BACKLOG_BYTES = 1024 * 1024  # below this, a burst of writes is refused at once


def metrics_host(listen: str) -> str:
    """Expose metrics on the interface the gRPC server listens on."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    return host or "0.0.0.0"


class PlumbingInterceptor(WrappingInterceptor):
    """Tracing (while on), metrics, audit, call limits, auth and (unless
    ``error_mapping=False``) error mapping."""

    def __init__(
        self,
        audit_writer: AuditWriter,
        authority: Authority | None,
        *,
        certificates: bool,
        error_mapping: bool = True,
        limiter: CallLimiter | None = None,
    ) -> None:
        super().__init__()
        self.audit_writer = audit_writer
        self.authority = authority
        self.certificates = certificates
        self.error_mapping = error_mapping
        self.limiter = limiter

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if self.error_mapping:
            handler = map_errors(method, handler)
        if self.authority:
            handler = guard(method, handler, self.authority)
        if self.limiter is not None:
            handler = self.limiter.wrap(method, handler)
        handler = audit(
            method, handler, self.audit_writer, self.authority, certificates=self.certificates
        )
        handler = measure(method, handler)
        if tracing.enabled():  # outermost: the span covers auth, audit and limits
            handler = traced(method, handler)
        return handler


class ServerPlumbing:
    """Auth, audit, call limits and metrics for one server process."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.authority = authority_from_settings(settings)
        self.limits = ServerLimits.from_settings(settings)
        self.limiter = CallLimiter(self.limits)
        runtime.extras[CALL_LIMITER] = self.limiter
        # A plaintext server has no client certificates to name callers by.
        self.certificates = bool(getattr(settings, "tls_cert", ""))
        if settings.audit_backlog_bytes < MIN_AUDIT_BACKLOG_BYTES:
            raise SystemExit(
                f"WALLET_AUDIT_BACKLOG_BYTES must be at least {MIN_AUDIT_BACKLOG_BYTES}"
            )
        self.audit_writer = AuditWriter(runtime.db, max_bytes=settings.audit_backlog_bytes)
        runtime.extras[AUDIT_WRITER] = self.audit_writer
        self.metrics_http: MetricsHttpServer | None = None
        self.collector: StateCollector | None = None
        if settings.metrics_port:
            self.metrics_http = MetricsHttpServer(
                metrics_host(settings.listen),
                settings.metrics_port,
                ports_to_try=settings.workers,
            )
            runtime.extras[METRICS_HTTP] = self.metrics_http
            self.collector = StateCollector(
                runtime.db,
                state_sources(runtime),
                amqp_url=settings.amqp_url,
                audit_pending=lambda: self.audit_writer.pending,
            )
        if self.authority:
            log.info(
                "authorisation on (bearer tokens: %s, client certificate roles: %s)",
                "yes" if self.authority.tokens else "no",
                "yes" if self.authority.certificates else "no",
            )

    def interceptor(self, *, error_mapping: bool = True) -> PlumbingInterceptor:
        """The server's one interceptor; ``error_mapping=False`` when the server adds
        interceptors of its own (``create_server`` then maps errors after them)."""
        return PlumbingInterceptor(
            self.audit_writer,
            self.authority,
            certificates=self.certificates,
            error_mapping=error_mapping,
            limiter=self.limiter,
        )

    async def start(self) -> None:
        await self.audit_writer.start()
        if self.metrics_http is not None:
            await self.metrics_http.start()

    async def start_collecting(self) -> None:
        """Begin the periodic state collection (after the components have started)."""
        if self.collector is not None:
            await self.collector.start()

    async def stop(self) -> None:
        if self.collector is not None:
            await self.collector.stop()
        if self.metrics_http is not None:
            await self.metrics_http.stop()
        await self.audit_writer.stop()
