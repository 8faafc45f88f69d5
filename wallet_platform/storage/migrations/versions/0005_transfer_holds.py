"""Transfer holds (``transfer_holds``) and the step idempotency scope.

The debit step of a transfer records a hold in the same transaction as the debit; the
credit posts it, the refund voids it (``wallet_service.holds``). This revision creates
the table and brings an existing ledger to the same state, so an upgraded database
reconciles (sum of balances + OPEN holds = deposits - withdrawals):

* one hold per transfer id that has a ``transfer_debited`` event: POSTED when the
  transfer has a ``transfer_credited`` event, VOIDED when it has a
  ``transfer_refunded`` event, else OPEN. The destination is the transfer's
  ``to_wallet_id`` (else the credited wallet, else '' = unknown: such a hold can only
  be voided back to its source);
* transfers without a currency get their source wallet's (the steps require one);
* the step records of unfinished sagas move from scope ``wallet`` to scope ``step``
  (key ``<transfer_id>:<step>``) with the fingerprint the service computes now, so a
  saga that resumes after the upgrade replays its steps instead of repeating them.
  Only records whose fingerprint is the saga's own call move: a client's record that
  merely used such a key stays a client record.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 09:00:00
"""

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# step name -> (RPC method, which transfer wallet the step moves)
STEPS = {
    "debit": ("DebitForTransfer", "from_wallet_id"),
    "credit": ("CreditForTransfer", "to_wallet_id"),
    "refund": ("RefundForTransfer", "from_wallet_id"),
}
UNFINISHED = ("PENDING", "DEBITED", "COMPENSATING")

BACKFILL = """
INSERT INTO transfer_holds (transfer_id, from_wallet_id, to_wallet_id, amount, currency,
                            state, created_at, updated_at)
SELECT d.transfer_id, d.wallet_id,
       COALESCE(
           (SELECT t.to_wallet_id FROM transfers t WHERE t.transfer_id = d.transfer_id),
           (SELECT MIN(c.wallet_id) FROM wallet_events c
            WHERE c.transfer_id = d.transfer_id AND c.type = 'transfer_credited'),
           ''),
       d.amount, d.currency,
       CASE
           WHEN EXISTS (SELECT 1 FROM wallet_events c
                        WHERE c.transfer_id = d.transfer_id AND c.type = 'transfer_credited')
               THEN 'POSTED'
           WHEN EXISTS (SELECT 1 FROM wallet_events r
                        WHERE r.transfer_id = d.transfer_id AND r.type = 'transfer_refunded')
               THEN 'VOIDED'
           ELSE 'OPEN'
       END,
       d.occurred_at,
       COALESCE(
           (SELECT MIN(s.occurred_at) FROM wallet_events s
            WHERE s.transfer_id = d.transfer_id
              AND s.type IN ('transfer_credited', 'transfer_refunded')),
           d.occurred_at)
FROM wallet_events d
WHERE d.type = 'transfer_debited' AND d.transfer_id IS NOT NULL
  AND d.event_id = (SELECT MIN(e.event_id) FROM wallet_events e
                    WHERE e.transfer_id = d.transfer_id AND e.type = 'transfer_debited')
"""

FILL_CURRENCY = """
UPDATE transfers SET currency = (
    SELECT w.currency FROM wallets w WHERE w.wallet_id = transfers.from_wallet_id)
WHERE currency IS NULL
"""


def _fingerprint(*params: object) -> str:
    """The service's idempotency fingerprint (wallet_service.domain.fingerprint)."""
    raw = json.dumps(list(params), separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def upgrade() -> None:
    op.create_table(
        "transfer_holds",
        sa.Column("transfer_id", sa.String(length=64), nullable=False),
        sa.Column("from_wallet_id", sa.String(length=64), nullable=False),
        sa.Column("to_wallet_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("transfer_id"),
        sa.CheckConstraint("amount > 0", name="ck_transfer_holds_amount_positive"),
        sa.CheckConstraint("state IN ('OPEN', 'POSTED', 'VOIDED')", name="ck_transfer_holds_state"),
    )
    op.create_index("ix_transfer_holds_state", "transfer_holds", ["state"], unique=False)
    conn = op.get_bind()
    conn.execute(sa.text(BACKFILL))
    legacy_currency = {
        row.transfer_id: row.currency or ""
        for row in conn.execute(
            sa.text(
                "SELECT transfer_id, currency FROM transfers WHERE state IN :states"
            ).bindparams(sa.bindparam("states", expanding=True)),
            {"states": list(UNFINISHED)},
        )
    }
    conn.execute(sa.text(FILL_CURRENCY))
    _move_step_records(conn, legacy_currency)


def _move_step_records(conn: sa.Connection, legacy_currency: dict[str, str]) -> None:
    """Unfinished sagas' step records: scope 'wallet' -> 'step', new fingerprint."""
    for step, (method, wallet_column) in STEPS.items():
        rows = conn.execute(
            sa.text(
                f"""
                SELECT r.request_id, r.fingerprint, t.transfer_id, t.{wallet_column} AS wallet_id,
                       t.to_wallet_id, t.amount, t.currency
                FROM transfers t
                JOIN idempotency_records r
                  ON r.scope = 'wallet' AND r.request_id = t.transfer_id || :suffix
                WHERE t.state IN :states
                """
            ).bindparams(sa.bindparam("states", expanding=True)),
            {"suffix": f":{step}", "states": list(UNFINISHED)},
        ).all()
        for row in rows:
            sent = legacy_currency.get(row.transfer_id, "")
            old = _fingerprint(method, row.wallet_id, row.amount, row.transfer_id, sent)
            if row.fingerprint != old:
                continue  # not the saga's own call: a client's key, left alone
            to_wallet = row.to_wallet_id if step == "debit" else ""
            new = _fingerprint(
                method, row.wallet_id, row.amount, row.transfer_id, row.currency or "", to_wallet
            )
            conn.execute(
                sa.text(
                    "UPDATE idempotency_records SET scope = 'step', fingerprint = :new "
                    "WHERE scope = 'wallet' AND request_id = :key"
                ),
                {"new": new, "key": row.request_id},
            )


def downgrade() -> None:
    conn = op.get_bind()
    conn.execute(
        sa.text(
            "UPDATE idempotency_records SET scope = 'wallet' WHERE scope = 'step' AND NOT "
            "EXISTS (SELECT 1 FROM idempotency_records c "
            "WHERE c.scope = 'wallet' AND c.request_id = idempotency_records.request_id)"
        )
    )
    op.drop_index("ix_transfer_holds_state", table_name="transfer_holds")
    op.drop_table("transfer_holds")
