"""The transport limits of every server: HTTP/2, keepalive and connection age.

The per-call limits (open streams, unary calls in flight) are counted by
:mod:`wallet_platform.server.call_limits`; this module turns the settings into the
channel options of ``grpc.aio.server`` and refuses to start with limits that
contradict each other.

Why these values (docs/operations.md, "Limits", says the same for operators):

- **Keepalive.** The server pings a connection that has been quiet for a minute and
  closes it when no answer comes within 20 s, also on a watch stream with nothing to
  send (``max_pings_without_data`` 0 = unlimited), so a vanished client does not hold
  its stream slot for ever. Clients may ping too, at most every 10 s, also between
  calls; two pings too soon and the server says GOAWAY (ENHANCE_YOUR_CALM).
- **Connection age.** Clients (the orchestrator's channel to WalletService above all)
  keep one HTTP/2 connection for as long as it works, so replicas added later get none
  of their calls. Closing connections after ``max_connection_age_ms`` (GOAWAY; calls
  in flight get ``max_connection_age_grace_ms`` to finish, grpc adds +/-10 % jitter)
  makes clients reconnect and spread again. It also ends, at the latest after age +
  grace, a stream whose client stopped reading. Default 5 minutes.
- **HTTP/2 streams per connection** must exceed the server-stream cap per connection,
  so that a connection full of watch streams still carries unary calls.
- **Message size**: 4 MiB (``builder.MAX_MESSAGE_BYTES``): the largest request today
  is under 1 KiB; a bulk request of 1,000 items of a few hundred bytes stays far below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
MIN_CLIENT_PING_INTERVAL_MS = 10_000
MAX_PING_STRIKES = 2


@dataclass(frozen=True)
class ServerLimits:
    """The limits of one server process (``WALLET_MAX_*`` settings; defaults in config)."""

    max_streams: int
    max_streams_per_connection: int
    max_unary_calls: int
    max_concurrent_streams: int
    max_connection_age_ms: int
    max_connection_age_grace_ms: int

    @classmethod
    def from_settings(cls, settings: Any) -> ServerLimits:
        """The limits in ``settings``; SystemExit with the reason when they make no sense."""
        limits = cls(
            max_streams=settings.max_streams,
            max_streams_per_connection=settings.max_streams_per_connection,
            max_unary_calls=settings.max_unary_calls,
            max_concurrent_streams=settings.max_concurrent_streams,
            max_connection_age_ms=settings.max_connection_age_ms,
            max_connection_age_grace_ms=settings.max_connection_age_grace_ms,
        )
        problem = limits.problem()
        if problem:
            raise SystemExit(problem)
        return limits

    def problem(self) -> str | None:
        """Why these limits cannot work together, or None."""
        for name in (
            "max_streams",
            "max_streams_per_connection",
            "max_unary_calls",
            "max_concurrent_streams",
        ):
            if getattr(self, name) < 1:
                return f"WALLET_{name.upper()} must be at least 1"
        if self.max_connection_age_ms < 0 or self.max_connection_age_grace_ms < 0:
            return "WALLET_MAX_CONNECTION_AGE_MS and ..._GRACE_MS must not be negative"
        if self.max_concurrent_streams <= self.max_streams_per_connection:
            return (
                "WALLET_MAX_CONCURRENT_STREAMS must exceed WALLET_MAX_STREAMS_PER_CONNECTION "
                "(else a connection full of streams has no room left for unary calls)"
            )
        return None

    def grpc_options(self) -> list[tuple[str, int]]:
        """Channel options for ``grpc.aio.server``."""
        options = [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
            ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ]
        if self.max_connection_age_ms:
            options += [
                ("grpc.max_connection_age_ms", self.max_connection_age_ms),
                ("grpc.max_connection_age_grace_ms", self.max_connection_age_grace_ms),
            ]
        return options
