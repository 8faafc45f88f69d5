"""The RED series of every server: each RPC counted and timed, by service, method and
status code, and the calls in flight.

``wallet_platform.server.rpc_metrics.measure`` feeds them (it wraps gRPC method
handlers, so it lives with the server; the series are observability's).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

RPC_HANDLED = Counter(
    "wallet_grpc_server_handled",
    "RPCs completed by the server, by service, method and status code",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_LATENCY = Histogram(
    "wallet_grpc_server_handling_seconds",
    "Time from receiving an RPC to its status, by service, method and status code",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = Gauge(
    "wallet_grpc_server_in_flight",
    "RPCs being served right now",
    ["grpc_service", "grpc_method"],
)
