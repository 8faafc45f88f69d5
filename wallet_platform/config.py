"""Configuration from the environment, overridable by command-line flags.

Every setting has one environment variable (``WALLET_*``) and one flag; the flag wins.
Defaults give the embedded platform: SQLite under ``var/`` and the in-process bus.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path("var")


def default_database_url() -> str:
    """SQLite file under ``var/`` (relative to the working directory)."""
    return f"sqlite:///{DEFAULT_DATA_DIR / 'wallet.db'}"


@dataclass(frozen=True)
class Option:
    """One setting: its dataclass field, environment variable, flag and meaning."""

    name: str
    env: str
    help: str
    kind: type = str


# Events per envelope message: a body of a thousand events is still far below the
# broker's message size limit, and one delivery never holds more than that in flight.
ENVELOPE_MAX_RANGE = (2, 1000)


@dataclass
class Settings:
    """Everything a process may need. Unused fields are simply ignored by a service."""

    database_url: str = field(default_factory=default_database_url)
    amqp_url: str = ""
    amqp_queue_type: str = "quorum"
    amqp_envelopes: bool = False
    amqp_envelope_max: int = 100
    listen: str = "127.0.0.1:50051"
    wallet_service_target: str = "127.0.0.1:50051"
    target: str = "127.0.0.1:50051"
    log_level: str = "INFO"
    log_format: str = "json"
    log_file: str = ""
    fraud_large_withdrawal: int = 1_000_000
    fraud_rapid_count: int = 3
    fraud_rapid_window_seconds: int = 60
    failpoints: str = ""
    metrics_port: int = 0
    db_pool_size: int = 10
    db_statement_timeout_ms: int = 5000
    db_lock_timeout_ms: int = 3000
    transfer_wait_ms: int = 2000
    saga_lease_ms: int = 15000
    saga_sweep_interval_ms: int = 2000
    saga_step_deadline_ms: int = 5000
    saga_retry_max_ms: int = 2000
    saga_step_batch: int = 1
    saga_step_batch_max: int = 500
    workers: int = 1
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tls_ca: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    auth_tokens: str = ""
    auth_token: str = ""
    currencies: str = ""
    tls_client_roles: str = ""
    allow_insecure: bool = False
    max_streams: int = 1000
    max_streams_per_connection: int = 100
    max_unary_calls: int = 1000
    max_concurrent_streams: int = 1000
    max_connection_age_ms: int = 300_000
    max_connection_age_grace_ms: int = 30_000
    audit_backlog_bytes: int = 64 * 1024 * 1024
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")


OPTIONS: tuple[Option, ...] = (
    Option("database_url", "WALLET_DATABASE_URL", "SQLAlchemy database URL (SQLite or PostgreSQL)"),
    Option("amqp_url", "WALLET_AMQP_URL", "RabbitMQ URL; empty means the in-process bus"),
    Option(
        "amqp_queue_type",
        "WALLET_AMQP_QUEUE_TYPE",
        "RabbitMQ type of the consumer queues and DLQs: quorum or classic",
    ),
    Option(
        "amqp_envelopes",
        "WALLET_AMQP_ENVELOPES",
        "the outbox relay packs a round's events of one routing key into envelope messages",
        bool,
    ),
    Option(
        "amqp_envelope_max",
        "WALLET_AMQP_ENVELOPE_MAX",
        "most events in one envelope message (2 to 1000)",
        int,
    ),
    Option("listen", "WALLET_LISTEN", "HOST:PORT this server listens on"),
    Option(
        "wallet_service_target",
        "WALLET_SERVICE_TARGET",
        "where the orchestrator reaches WalletService",
    ),
    Option("target", "WALLET_TARGET", "where walletctl and wallet-bench send RPCs"),
    Option("log_level", "WALLET_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
    Option("log_format", "WALLET_LOG_FORMAT", "json or console"),
    Option("log_file", "WALLET_LOG_FILE", "also write logs to this file (rotated)"),
    Option(
        "fraud_large_withdrawal",
        "WALLET_FRAUD_LARGE_WITHDRAWAL",
        "large-withdrawal threshold, minor units",
        int,
    ),
    Option("fraud_rapid_count", "WALLET_FRAUD_RAPID_COUNT", "rapid-withdrawal count", int),
    Option(
        "fraud_rapid_window_seconds",
        "WALLET_FRAUD_RAPID_WINDOW_SECONDS",
        "rapid-withdrawal window, seconds of event time",
        int,
    ),
    Option("failpoints", "WALLET_FAILPOINTS", "fault injection: name=action[,name=action]"),
    Option("metrics_port", "WALLET_METRICS_PORT", "Prometheus metrics port; 0 = off", int),
    Option("db_pool_size", "WALLET_DB_POOL_SIZE", "database connection pool size", int),
    Option(
        "db_statement_timeout_ms",
        "WALLET_DB_STATEMENT_TIMEOUT_MS",
        "PostgreSQL statement_timeout, ms",
        int,
    ),
    Option("db_lock_timeout_ms", "WALLET_DB_LOCK_TIMEOUT_MS", "PostgreSQL lock_timeout, ms", int),
    Option(
        "transfer_wait_ms",
        "WALLET_TRANSFER_WAIT_MS",
        "how long CreateTransfer waits for a terminal state (BatchCreateTransfers: one "
        "such wait shared by the whole batch), ms",
        int,
    ),
    Option("saga_lease_ms", "WALLET_SAGA_LEASE_MS", "how long a replica owns a saga, ms", int),
    Option(
        "saga_sweep_interval_ms",
        "WALLET_SAGA_SWEEP_INTERVAL_MS",
        "how often the saga sweeper looks for unfinished sagas, ms",
        int,
    ),
    Option(
        "saga_step_deadline_ms",
        "WALLET_SAGA_STEP_DEADLINE_MS",
        "gRPC deadline per saga step call, ms",
        int,
    ),
    Option(
        "saga_retry_max_ms",
        "WALLET_SAGA_RETRY_MAX_MS",
        "longest backoff between saga step retries, ms",
        int,
    ),
    Option(
        "saga_step_batch",
        "WALLET_SAGA_STEP_BATCH",
        "1 = send the step calls of concurrent sagas as BatchApplyTransferSteps; "
        "0 = one call per step",
        int,
    ),
    Option(
        "saga_step_batch_max",
        "WALLET_SAGA_STEP_BATCH_MAX",
        "most saga steps in one BatchApplyTransferSteps call (1-1000)",
        int,
    ),
    Option("workers", "WALLET_WORKERS", "server processes sharing the port", int),
    Option("tls_cert", "WALLET_TLS_CERT", "server certificate (PEM); enables TLS"),
    Option("tls_key", "WALLET_TLS_KEY", "server private key (PEM)"),
    Option("tls_client_ca", "WALLET_TLS_CLIENT_CA", "CA for client certificates; enables mTLS"),
    Option("tls_ca", "WALLET_TLS_CA", "CA that clients use to verify servers"),
    Option("tls_client_cert", "WALLET_TLS_CLIENT_CERT", "client certificate for mTLS"),
    Option("tls_client_key", "WALLET_TLS_CLIENT_KEY", "client private key for mTLS"),
    Option(
        "auth_tokens", "WALLET_AUTH_TOKENS", "server tokens: token=role[+role];...; empty = off"
    ),
    Option("auth_token", "WALLET_AUTH_TOKEN", "bearer token that clients send"),
    Option(
        "currencies",
        "WALLET_CURRENCIES",
        "ISO 4217 codes new wallets may hold, e.g. USD,EUR,JPY; empty = every active code",
    ),
    Option(
        "tls_client_roles",
        "WALLET_TLS_CLIENT_ROLES",
        "client certificate roles (mTLS): name=role[+role];...; empty = off",
    ),
    Option(
        "allow_insecure",
        "WALLET_ALLOW_INSECURE",
        "allow serving a non-loopback address without authentication",
        bool,
    ),
    Option(
        "max_streams",
        "WALLET_MAX_STREAMS",
        "open server streams (WatchTransfers, health Watch) per process",
        int,
    ),
    Option(
        "max_streams_per_connection",
        "WALLET_MAX_STREAMS_PER_CONNECTION",
        "open server streams per client connection",
        int,
    ),
    Option(
        "max_unary_calls",
        "WALLET_MAX_UNARY_CALLS",
        "unary calls served at once per process (streams not counted)",
        int,
    ),
    Option(
        "max_concurrent_streams",
        "WALLET_MAX_CONCURRENT_STREAMS",
        "HTTP/2 streams per connection, calls and streams together",
        int,
    ),
    Option(
        "max_connection_age_ms",
        "WALLET_MAX_CONNECTION_AGE_MS",
        "close client connections after this age so they rebalance, ms; 0 = never",
        int,
    ),
    Option(
        "max_connection_age_grace_ms",
        "WALLET_MAX_CONNECTION_AGE_GRACE_MS",
        "time calls on an aged connection get to finish, ms",
        int,
    ),
    Option(
        "audit_backlog_bytes",
        "WALLET_AUDIT_BACKLOG_BYTES",
        "audit rows held in memory while the database is slow, bytes",
        int,
    ),
)


def _flag(option: Option) -> str:
    return "--" + option.name.replace("_", "-")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse(option: Option, raw: str) -> Any:
    """An environment value as the option's type (ValueError if it is not one)."""
    if option.kind is bool:
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        raise ValueError(raw)
    return option.kind(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; each defaults to None so the environment shows through.

    A yes/no setting is a flag without a value (``--allow-insecure``).
    """
    group = parser.add_argument_group("configuration (each also an environment variable)")
    for option in OPTIONS:
        help_text = f"{option.help} [{option.env}]"
        if option.kind is bool:
            group.add_argument(
                _flag(option), dest=option.name, action="store_const", const=True, help=help_text
            )
            continue
        group.add_argument(
            _flag(option), dest=option.name, type=option.kind, default=None, help=help_text
        )


def load_settings(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then environment, then flags."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = env.get(option.env)
        if raw is not None and raw != "":
            try:
                values[option.name] = _parse(option, raw)
            except ValueError:
                expected = "1 or 0" if option.kind is bool else f"a valid {option.kind.__name__}"
                raise SystemExit(f"{option.env}={raw!r} is not {expected}") from None
        elif raw == "" and option.kind is str:
            values[option.name] = ""
        if args is not None:
            flag_value = getattr(args, option.name, None)
            if flag_value is not None:
                values[option.name] = flag_value
    if values.get("database_url") == "":
        values.pop("database_url")
    settings = Settings(**values)
    if not ENVELOPE_MAX_RANGE[0] <= settings.amqp_envelope_max <= ENVELOPE_MAX_RANGE[1]:
        low, high = ENVELOPE_MAX_RANGE
        raise SystemExit(
            f"WALLET_AMQP_ENVELOPE_MAX={settings.amqp_envelope_max} is not in {low}..{high}"
        )
    return settings


def parse_settings(
    description: str, argv: Sequence[str] | None = None, default_listen: str | None = None
) -> Settings:
    """Parse a server's command line into Settings (the usual entry for ``main()``)."""
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings(args)
    if default_listen and args.listen is None and not os.environ.get("WALLET_LISTEN"):
        settings = settings.replace(listen=default_listen)
    return settings
