"""Trace context with the work that outlives a request (``traceparent`` columns).

A W3C ``traceparent`` (``wallet_platform.observability.tracing``) stored with:

* ``outbox`` rows: the relay publishes each message as a child of the write that
  queued it (the AMQP header ``traceparent``);
* ``transfers``: a saga resumed by another replica or after a crash continues the trace
  of the CreateTransfer call that started it;
* ``bus_messages``: the in-process bus carries the header to its consumers.

NULL when tracing was off for the writer (the column is never required).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("outbox", "transfers", "bus_messages")


def upgrade() -> None:
    # A nullable column without a default: a catalogue change on both backends, no
    # table rewrite, so it is safe on a large outbox.
    for table in TABLES:
        op.add_column(table, sa.Column("traceparent", sa.String(length=128), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):  # SQLite drops a column by copying the table
        with op.batch_alter_table(table) as batch:
            batch.drop_column("traceparent")
