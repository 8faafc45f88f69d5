"""Table definitions (SQLAlchemy Core) for every service, one MetaData.

All services share one database (``WALLET_DATABASE_URL``) but each owns its tables:
WalletService the ledger (wallets, wallet_events, idempotency_records, transfer_holds,
outbox), the orchestrator transfers and transfer_steps, the consumers their
projections and inbox, the audit interceptor audit_log. Migrations under
``migrations/versions`` create them; this module is what code queries against. Times
are timezone-aware UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# --- WalletService: the ledger -------------------------------------------------------

wallets = Table(
    "wallets",
    metadata,
    Column("wallet_id", String(64), primary_key=True),
    Column("currency", String(3), nullable=False),
    Column("balance", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # ACTIVE | FROZEN
    Column("version", BigInteger, nullable=False),  # = sequence of the last event
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("balance >= 0", name="ck_wallets_balance_nonnegative"),
    CheckConstraint("status IN ('ACTIVE', 'FROZEN')", name="ck_wallets_status"),
)

# Append-only: on PostgreSQL a trigger rejects UPDATE and DELETE.
wallet_events = Table(
    "wallet_events",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("wallet_id", String(64), ForeignKey("wallets.wallet_id"), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("type", String(32), nullable=False),  # funds_deposited, transfer_debited, ...
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("transfer_id", String(64), nullable=True),
    Column("request_id", String(128), nullable=False),
    Column("audit_id", String(36), nullable=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("wallet_id", "sequence", name="uq_wallet_events_wallet_sequence"),
    CheckConstraint("amount >= 0", name="ck_wallet_events_amount_nonnegative"),
    CheckConstraint("balance_after >= 0", name="ck_wallet_events_balance_nonnegative"),
    CheckConstraint("sequence >= 1", name="ck_wallet_events_sequence_positive"),
)
Index("ix_wallet_events_transfer_id", wallet_events.c.transfer_id)
Index("ix_wallet_events_occurred_at", wallet_events.c.occurred_at)

# One row per idempotent write, in the same transaction as its effect. The stored
# outcome is either a serialized response (status_code = 'OK') or an error.
idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("scope", String(32), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("status_code", String(32), nullable=False),  # grpc.StatusCode name
    Column("error_reason", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("response", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("scope", "request_id", name="pk_idempotency_records"),
)

# Money in flight: one row per transfer, written by the debit step in the same
# transaction as the debit, settled once by the credit (POSTED) or the refund (VOIDED).
# Sum of balances + sum of OPEN holds = deposits - withdrawals (wallet_service.holds).
transfer_holds = Table(
    "transfer_holds",
    metadata,
    Column("transfer_id", String(64), primary_key=True),
    Column("from_wallet_id", String(64), nullable=False),
    Column("to_wallet_id", String(64), nullable=False),  # '' = unknown (see migration 0005)
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("state", String(8), nullable=False),  # OPEN | POSTED | VOIDED
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("amount > 0", name="ck_transfer_holds_amount_positive"),
    CheckConstraint("state IN ('OPEN', 'POSTED', 'VOIDED')", name="ck_transfer_holds_state"),
)
Index("ix_transfer_holds_state", transfer_holds.c.state)

# Transactional outbox: written with each event, relayed to RabbitMQ later.
outbox = Table(
    "outbox",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("message_id", String(128), nullable=False, unique=True),  # AMQP message_id
    Column("routing_key", String(64), nullable=False),
    Column("message_type", String(64), nullable=False),  # full proto name
    Column("payload", LargeBinary, nullable=False),  # serialized protobuf
    Column("status", String(16), nullable=False),  # pending | published
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    # W3C trace context of the write that queued the row (NULL: tracing was off).
    Column("traceparent", String(128), nullable=True),
)
Index("ix_outbox_status_id", outbox.c.status, outbox.c.id)

# --- Saga orchestrator -----------------------------------------------------------

transfers = Table(
    "transfers",
    metadata,
    Column("transfer_id", String(64), primary_key=True),
    Column("request_id", String(128), nullable=False, unique=True),
    Column("fingerprint", String(64), nullable=False),
    Column("from_wallet_id", String(64), nullable=False),
    Column("to_wallet_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=True),
    Column("state", String(16), nullable=False),
    Column("failure_reason", Text, nullable=True),
    Column("failure_code", String(32), nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("audit_id", String(36), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # W3C trace context of CreateTransfer: a resumed saga continues its trace.
    Column("traceparent", String(128), nullable=True),
    CheckConstraint("amount > 0", name="ck_transfers_amount_positive"),
)
Index("ix_transfers_state", transfers.c.state)
Index("ix_transfers_from_wallet", transfers.c.from_wallet_id)
Index("ix_transfers_to_wallet", transfers.c.to_wallet_id)
Index("ix_transfers_created_at", transfers.c.created_at)

transfer_steps = Table(
    "transfer_steps",
    metadata,
    Column("transfer_id", String(64), ForeignKey("transfers.transfer_id"), nullable=False),
    Column("name", String(16), nullable=False),  # debit | credit | refund
    Column("position", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # RUNNING | SUCCEEDED | REJECTED
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("transfer_id", "name", name="pk_transfer_steps"),
)

# --- Consumers -----------------------------------------------------------------------

# Inbox: (consumer, message id) written in the projection's transaction = exactly once.
inbox = Table(
    "inbox",
    metadata,
    Column("consumer", String(32), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("consumer", "message_id", name="pk_inbox"),
)

wallet_stats = Table(
    "wallet_stats",
    metadata,
    Column("wallet_id", String(64), primary_key=True),
    Column("total_deposited", BigInteger, nullable=False, server_default="0"),
    Column("total_withdrawn", BigInteger, nullable=False, server_default="0"),
    Column("total_transferred_in", BigInteger, nullable=False, server_default="0"),
    Column("total_transferred_out", BigInteger, nullable=False, server_default="0"),
    Column("deposit_count", BigInteger, nullable=False, server_default="0"),
    Column("withdrawal_count", BigInteger, nullable=False, server_default="0"),
    Column("transfer_in_count", BigInteger, nullable=False, server_default="0"),
    Column("transfer_out_count", BigInteger, nullable=False, server_default="0"),
    Column("events_applied", BigInteger, nullable=False, server_default="0"),
    Column("last_activity_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

fraud_withdrawals = Table(
    "fraud_withdrawals",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("wallet_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
)
Index(
    "ix_fraud_withdrawals_wallet_time",
    fraud_withdrawals.c.wallet_id,
    fraud_withdrawals.c.occurred_at,
)

fraud_alerts = Table(
    "fraud_alerts",
    metadata,
    Column("alert_id", String(36), primary_key=True),
    Column("wallet_id", String(64), nullable=False),
    Column("rule", String(32), nullable=False),  # RAPID_WITHDRAWALS | LARGE_WITHDRAWAL
    Column("event_ids", Text, nullable=False),  # JSON list
    Column("detail", Text, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=True),
    Column("window_end", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_fraud_alerts_wallet_created", fraud_alerts.c.wallet_id, fraud_alerts.c.created_at)
Index("ix_fraud_alerts_created", fraud_alerts.c.created_at)

# In-process event bus (WALLET_AMQP_URL empty): one row per (queue, message) until it
# is acked (deleted) or dead-lettered (state 'dead', with the reason in last_error).
bus_messages = Table(
    "bus_messages",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("queue", String(64), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("routing_key", String(64), nullable=False),
    Column("message_type", String(128), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", String(8), nullable=False),  # ready | dead
    Column("attempt", Integer, nullable=False, server_default="0"),  # deliveries so far
    Column("available_at_ms", BigInteger, nullable=False),  # epoch ms (retry back-off)
    Column("locked_until_ms", BigInteger, nullable=True),  # a consumer's claim lease
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("dead_at", DateTime(timezone=True), nullable=True),
    Column("traceparent", String(128), nullable=True),  # the AMQP header's equivalent
    CheckConstraint("state IN ('ready', 'dead')", name="ck_bus_messages_state"),
)
Index(
    "ix_bus_messages_queue_state_id", bus_messages.c.queue, bus_messages.c.state, bus_messages.c.id
)

# --- Audit trail ---------------------------------------------------------------------

audit_log = Table(
    "audit_log",
    metadata,
    Column("audit_id", String(36), primary_key=True),
    Column("method", String(128), nullable=False),
    Column("request_json", Text, nullable=False),
    Column("caller", String(128), nullable=True),
    Column("peer", String(128), nullable=True),
    Column("status_code", String(32), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Integer, nullable=True),
)
Index("ix_audit_log_started", audit_log.c.started_at)
Index("ix_audit_log_method", audit_log.c.method)
