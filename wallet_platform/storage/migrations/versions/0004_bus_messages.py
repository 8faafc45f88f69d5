"""In-process event bus: queue and dead-letter storage (``bus_messages``).

The embedded bus (``WALLET_AMQP_URL`` empty) keeps its queues in the database rather
than in memory, so a crash between "published" and "consumed" loses nothing and
``walletctl dlq`` (another process) can list and replay dead letters.

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-27 14:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bus_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("routing_key", sa.String(length=64), nullable=False),
        sa.Column("message_type", sa.String(length=128), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("available_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("locked_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint("state IN ('ready', 'dead')", name="ck_bus_messages_state"),
    )
    op.create_index(
        "ix_bus_messages_queue_state_id", "bus_messages", ["queue", "state", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_bus_messages_queue_state_id", table_name="bus_messages")
    op.drop_table("bus_messages")
