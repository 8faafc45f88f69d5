"""Prometheus metrics: every server process exposes them on ``WALLET_METRICS_PORT``.

Four sources:

- :mod:`~wallet_platform.observability.rpc_metrics`: every RPC counted and timed, by
  service, method and status code (the RED metrics of each server);
- :mod:`~wallet_platform.observability.state_metrics`: the platform's state read
  periodically from the database and the broker by the parts of the platform this
  process runs: sagas by state and the oldest unfinished one, the outbox backlog,
  per-consumer lag and queue and DLQ depths;
- the audit writer's backlog (``wallet_audit_pending_rows``);
- the resource limits, updated by the code that enforces them (``limit_metrics``).

Metric names live in :data:`METRIC_NAMES` (the deploy tests check the Grafana
dashboard against it); importing this module registers every one of them. All
metrics go to prometheus-client's default registry, so several servers in one test
process share them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import disable_created_metrics, start_http_server

from wallet_platform.observability import limit_metrics, rpc_metrics, state_metrics

log = logging.getLogger(__name__)

# The modules whose import registers the metric families below.
REGISTERING_MODULES = (rpc_metrics, state_metrics, limit_metrics)

# Every metric family the platform registers (as Prometheus exposes them).
METRIC_NAMES: frozenset[str] = (
    frozenset(
        {
            "wallet_grpc_server_handled_total",
            "wallet_grpc_server_handling_seconds_bucket",
            "wallet_grpc_server_handling_seconds_count",
            "wallet_grpc_server_handling_seconds_sum",
            "wallet_grpc_server_in_flight",
            "wallet_sagas",
            "wallet_saga_oldest_unfinished_age_seconds",
            "wallet_outbox_pending",
            "wallet_outbox_oldest_pending_age_seconds",
            "wallet_consumer_queue_messages",
            "wallet_consumer_unapplied_events",
            "wallet_consumer_oldest_unapplied_age_seconds",
            "wallet_dlq_messages",
            "wallet_audit_pending_rows",
            "wallet_metrics_collect_errors_total",
            "wallet_metrics_last_collect_timestamp_seconds",
        }
    )
    | limit_metrics.NAMES
)


class MetricsHttpServer:
    """prometheus-client's HTTP exporter on ``host:port``, stoppable.

    With ``--workers N`` every forked worker has its own counters, so each serves them
    on its own port: the first free one of ``port .. port + N - 1``.
    """

    name = "metrics-http"

    def __init__(self, host: str, port: int, *, ports_to_try: int = 1) -> None:
        self.host = host
        self.port = port
        self.ports_to_try = max(1, ports_to_try)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        # The *_created series double the output and no dashboard uses them.
        disable_created_metrics()
        last_error: OSError | None = None
        for port in range(self.port, self.port + self.ports_to_try):
            try:
                self._server, self._thread = start_http_server(port, addr=self.host)
            except OSError as error:
                last_error = error
                continue
            self.port = int(self._server.server_address[1])
            log.info("metrics on http://%s:%s/metrics", self.host, self.port)
            return
        raise OSError(
            f"metrics port {self.port} (range of {self.ports_to_try}) unavailable: {last_error}"
        )

    async def stop(self) -> None:
        if self._server is not None:
            server = self._server
            self._server = None
            await asyncio.to_thread(server.shutdown)
            server.server_close()
