"""The server's limit settings: what they turn into, and the combinations refused."""

from __future__ import annotations

import pytest

from wallet_platform.config import Settings, load_settings
from wallet_platform.server.limits import ServerLimits


def test_the_defaults_are_sane_and_become_server_options() -> None:
    limits = ServerLimits.from_settings(Settings())
    assert limits.max_streams == 1000 and limits.max_streams_per_connection == 100
    options = dict(limits.grpc_options())
    assert options["grpc.max_concurrent_streams"] > limits.max_streams_per_connection
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.http2.min_ping_interval_without_data_ms"] >= 10_000
    assert options["grpc.keepalive_time_ms"] > 0


def test_every_limit_is_an_environment_variable() -> None:
    settings = load_settings(
        environ={
            "WALLET_MAX_STREAMS": "50",
            "WALLET_MAX_STREAMS_PER_CONNECTION": "5",
            "WALLET_MAX_UNARY_CALLS": "7",
            "WALLET_MAX_CONCURRENT_STREAMS": "64",
            "WALLET_MAX_CONNECTION_AGE_MS": "0",
            "WALLET_MAX_CONNECTION_AGE_GRACE_MS": "10",
            "WALLET_AUDIT_BACKLOG_BYTES": "2000000",
        }
    )
    limits = ServerLimits.from_settings(settings)
    assert (limits.max_streams, limits.max_streams_per_connection) == (50, 5)
    assert (limits.max_unary_calls, limits.max_concurrent_streams) == (7, 64)
    assert settings.audit_backlog_bytes == 2_000_000
    options = dict(limits.grpc_options())
    assert "grpc.max_connection_age_ms" not in options  # 0 = connections never aged out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_streams": 0}, "WALLET_MAX_STREAMS must be at least 1"),
        ({"max_unary_calls": -1}, "WALLET_MAX_UNARY_CALLS must be at least 1"),
        ({"max_connection_age_ms": -5}, "must not be negative"),
        (
            {"max_streams_per_connection": 100, "max_concurrent_streams": 100},
            "WALLET_MAX_CONCURRENT_STREAMS must exceed WALLET_MAX_STREAMS_PER_CONNECTION",
        ),
    ],
)
def test_limits_that_cannot_work_refuse_to_start(changes: dict[str, int], message: str) -> None:
    with pytest.raises(SystemExit) as refused:
        ServerLimits.from_settings(Settings().replace(**changes))
    assert message in str(refused.value)
