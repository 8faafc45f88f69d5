"""Initial schema: ledger, outbox, sagas, projections, audit.

The event log is append-only: on PostgreSQL a trigger rejects UPDATE, DELETE and
TRUNCATE of wallet_events, so not even a buggy release or a hand-typed statement can
rewrite history.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 14:02:47.082530
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION wallet_events_reject_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'wallet_events is append-only (% rejected)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("audit_id", sa.String(length=36), nullable=False),
        sa.Column("method", sa.String(length=128), nullable=False),
        sa.Column("request_json", sa.Text(), nullable=False),
        sa.Column("caller", sa.String(length=128), nullable=True),
        sa.Column("peer", sa.String(length=128), nullable=True),
        sa.Column("status_code", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("audit_id"),
    )
    op.create_index("ix_audit_log_method", "audit_log", ["method"], unique=False)
    op.create_index("ix_audit_log_started", "audit_log", ["started_at"], unique=False)
    op.create_table(
        "fraud_alerts",
        sa.Column("alert_id", sa.String(length=36), nullable=False),
        sa.Column("wallet_id", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("event_ids", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("alert_id"),
    )
    op.create_index("ix_fraud_alerts_created", "fraud_alerts", ["created_at"], unique=False)
    op.create_index(
        "ix_fraud_alerts_wallet_created", "fraud_alerts", ["wallet_id", "created_at"], unique=False
    )
    op.create_table(
        "fraud_withdrawals",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("wallet_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index(
        "ix_fraud_withdrawals_wallet_time",
        "fraud_withdrawals",
        ["wallet_id", "occurred_at"],
        unique=False,
    )
    op.create_table(
        "idempotency_records",
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.String(length=32), nullable=False),
        sa.Column("error_reason", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "request_id", name="pk_idempotency_records"),
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id", name="pk_inbox"),
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("routing_key", sa.String(length=64), nullable=False),
        sa.Column("message_type", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    op.create_index("ix_outbox_status_id", "outbox", ["status", "id"], unique=False)
    op.create_table(
        "transfers",
        sa.Column("transfer_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("from_wallet_id", sa.String(length=64), nullable=False),
        sa.Column("to_wallet_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("failure_code", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("audit_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_transfers_amount_positive"),
        sa.PrimaryKeyConstraint("transfer_id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index("ix_transfers_created_at", "transfers", ["created_at"], unique=False)
    op.create_index("ix_transfers_from_wallet", "transfers", ["from_wallet_id"], unique=False)
    op.create_index("ix_transfers_state", "transfers", ["state"], unique=False)
    op.create_index("ix_transfers_to_wallet", "transfers", ["to_wallet_id"], unique=False)
    op.create_table(
        "wallet_stats",
        sa.Column("wallet_id", sa.String(length=64), nullable=False),
        sa.Column("total_deposited", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_withdrawn", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_transferred_in", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_transferred_out", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("deposit_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("withdrawal_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("transfer_in_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("transfer_out_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("events_applied", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("wallet_id"),
    )
    op.create_table(
        "wallets",
        sa.Column("wallet_id", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('ACTIVE', 'FROZEN')", name="ck_wallets_status"),
        sa.CheckConstraint("balance >= 0", name="ck_wallets_balance_nonnegative"),
        sa.PrimaryKeyConstraint("wallet_id"),
    )
    op.create_table(
        "transfer_steps",
        sa.Column("transfer_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["transfer_id"],
            ["transfers.transfer_id"],
        ),
        sa.PrimaryKeyConstraint("transfer_id", "name", name="pk_transfer_steps"),
    )
    op.create_table(
        "wallet_events",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("wallet_id", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("transfer_id", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("audit_id", sa.String(length=36), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount >= 0", name="ck_wallet_events_amount_nonnegative"),
        sa.CheckConstraint("balance_after >= 0", name="ck_wallet_events_balance_nonnegative"),
        sa.CheckConstraint("sequence >= 1", name="ck_wallet_events_sequence_positive"),
        sa.ForeignKeyConstraint(
            ["wallet_id"],
            ["wallets.wallet_id"],
        ),
        sa.PrimaryKeyConstraint("event_id"),
        sa.UniqueConstraint("wallet_id", "sequence", name="uq_wallet_events_wallet_sequence"),
    )
    op.create_index("ix_wallet_events_occurred_at", "wallet_events", ["occurred_at"], unique=False)
    op.create_index("ix_wallet_events_transfer_id", "wallet_events", ["transfer_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY_FUNCTION)
        op.execute(
            "CREATE TRIGGER wallet_events_append_only BEFORE UPDATE OR DELETE ON wallet_events "
            "FOR EACH ROW EXECUTE FUNCTION wallet_events_reject_change()"
        )
        op.execute(
            "CREATE TRIGGER wallet_events_no_truncate BEFORE TRUNCATE ON wallet_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION wallet_events_reject_change()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS wallet_events_no_truncate ON wallet_events")
        op.execute("DROP TRIGGER IF EXISTS wallet_events_append_only ON wallet_events")
        op.execute("DROP FUNCTION IF EXISTS wallet_events_reject_change()")
    op.drop_index("ix_wallet_events_transfer_id", table_name="wallet_events")
    op.drop_index("ix_wallet_events_occurred_at", table_name="wallet_events")
    op.drop_table("wallet_events")
    op.drop_table("transfer_steps")
    op.drop_table("wallets")
    op.drop_table("wallet_stats")
    op.drop_index("ix_transfers_to_wallet", table_name="transfers")
    op.drop_index("ix_transfers_state", table_name="transfers")
    op.drop_index("ix_transfers_from_wallet", table_name="transfers")
    op.drop_index("ix_transfers_created_at", table_name="transfers")
    op.drop_table("transfers")
    op.drop_index("ix_outbox_status_id", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("inbox")
    op.drop_table("idempotency_records")
    op.drop_index("ix_fraud_withdrawals_wallet_time", table_name="fraud_withdrawals")
    op.drop_table("fraud_withdrawals")
    op.drop_index("ix_fraud_alerts_wallet_created", table_name="fraud_alerts")
    op.drop_index("ix_fraud_alerts_created", table_name="fraud_alerts")
    op.drop_table("fraud_alerts")
    op.drop_index("ix_audit_log_started", table_name="audit_log")
    op.drop_index("ix_audit_log_method", table_name="audit_log")
    op.drop_table("audit_log")
