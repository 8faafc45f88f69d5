"""Metrics of the resource limits: streams open, calls refused, audit backlog, watchers.

Kept apart from ``metrics`` (the RPC and state metrics) because the code that enforces
a limit updates its metric itself, at the moment it counts. Every name here is also
in ``metrics.METRIC_NAMES`` (through :data:`NAMES`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OPEN_STREAMS = Gauge(
    "wallet_grpc_server_open_streams",
    "Server streams open right now (WatchTransfers, health Watch, reflection)",
)
LIMIT_REFUSALS = Counter(
    "wallet_grpc_server_limit_refusals",
    "Calls refused with RESOURCE_EXHAUSTED by a server limit, by limit",
    ["limit"],
)
AUDIT_BACKLOG_BYTES = Gauge(
    "wallet_audit_backlog_bytes",
    "Approximate memory held by audit rows waiting to be written",
)
AUDIT_DROPPED = Counter(
    "wallet_audit_dropped_records",
    "Audit records of refused calls not stored because the backlog was full",
)
WATCH_SUBSCRIBERS = Gauge(
    "wallet_watch_subscribers",
    "WatchTransfers streams subscribed to this process's change feed",
)
WATCH_TOO_SLOW = Counter(
    "wallet_watch_too_slow",
    "WatchTransfers streams ended because their client did not keep up",
)

NAMES: frozenset[str] = frozenset(
    {
        "wallet_grpc_server_open_streams",
        "wallet_grpc_server_limit_refusals_total",
        "wallet_audit_backlog_bytes",
        "wallet_audit_dropped_records_total",
        "wallet_watch_subscribers",
        "wallet_watch_too_slow_total",
    }
)
