"""What every server gets besides its own components: metrics, audit and auth.

``runtime.start_server`` builds one :class:`ServerPlumbing` per process, installs its
interceptors in front of the service's own, starts it before the server accepts
calls and stops it after the server has drained (so the audit rows of the last calls
are written before the database closes).

Interceptor order (outermost first): metrics (sees every final status), audit (records
refused calls too), auth (refuses before servicer code runs), then the service's own
and ``ErrorInterceptor``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from wallet_common.audit import AuditInterceptor, AuditWriter
from wallet_common.metrics import MetricsHttpServer, MetricsInterceptor, StateCollector
from wallet_common.security import AuthInterceptor, token_table

if TYPE_CHECKING:
    from wallet_common.runtime import Runtime

log = logging.getLogger(__name__)

AUDIT_WRITER = "audit_writer"  # runtime.extras key (tests flush it)
METRICS_HTTP = "metrics_http"  # runtime.extras key (tests read the bound port)


def metrics_host(listen: str) -> str:
    """Expose metrics on the interface the gRPC server listens on."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    return host or "0.0.0.0"


class ServerPlumbing:
    """Auth, audit and metrics for one server process."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.tokens = token_table(settings)
        self.audit_writer = AuditWriter(runtime.db)
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
                role=runtime.role,
                amqp_url=settings.amqp_url,
                audit_pending=lambda: self.audit_writer.pending,
            )
        if self.tokens:
            log.info("token authentication on")

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        chain: list[grpc.aio.ServerInterceptor] = [
            MetricsInterceptor(),
            AuditInterceptor(self.audit_writer, self.tokens),
        ]
        if self.tokens:
            chain.append(AuthInterceptor(self.tokens))
        return chain

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
