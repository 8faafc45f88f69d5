"""The PostgreSQL single-request fast path of a balance change: two statements.

:data:`PG_MOVE` claims the idempotency key, locks the transfer's hold when the step
settles one, conditionally moves the balance (the ``WHERE`` clause is the movement
rule of :mod:`~wallet_service.adapters.movement_sql` plus the hold gate of
:mod:`~wallet_service.adapters.hold_sql`, both built from the domain; PostgreSQL
re-checks it on the latest row version after waiting for a lock, so there is no lost
update), appends the event with
sequence = the new version, and opens or settles the hold, all in one round trip. It
always returns one row: ``claimed`` says whether the key was ours, the wallet columns
are NULL when the change did not apply (the caller then runs the portable path in the
same transaction, which locks the rows and asks the domain why). :data:`PG_FINISH`
queues the outbox row and stores the response.

Both run through SQLAlchemy (``text()``) on the unit of work's connection, because
the portable path may have to run after them in the same transaction.

Event times come from ``clock_timestamp()`` taken after the row lock, never earlier
than the previous change, so a wallet's events are ordered in time as in sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_service import domain, holds
from wallet_service.adapters import hold_sql, movement_sql
from wallet_service.adapters.idempotency_sql import PENDING
from wallet_service.adapters.rows import wallet_from_row
from wallet_service.domain import WriteKey
from wallet_service.moves import MoveCommand

_ACTION = "CAST(:hold_action AS varchar)"
_TRANSFER = "CAST(:transfer_id AS varchar)"

PG_MOVE = text(
    f"""
WITH claim AS (
    INSERT INTO idempotency_records (scope, request_id, fingerprint, status_code, created_at)
    VALUES (:scope, :request_id, :fingerprint, :pending, :now)
    ON CONFLICT DO NOTHING
    RETURNING 1 AS claimed
), held AS MATERIALIZED (
    SELECT {hold_sql.columns("h")}
    FROM transfer_holds AS h
    WHERE h.transfer_id = {_TRANSFER}
      AND {_ACTION} IN ({hold_sql.SETTLING_CODES})
      AND EXISTS (SELECT 1 FROM claim)
    FOR UPDATE
), moved AS (
    UPDATE wallets AS w
    SET balance = w.balance + CAST(:delta AS bigint),
        version = w.version + 1,
        updated_at = GREATEST(w.updated_at, clock_timestamp())
    WHERE w.wallet_id = :wallet_id
      AND EXISTS (SELECT 1 FROM claim)
      AND {
        movement_sql.predicate(
            wallet="w",
            allow_frozen="CAST(:allow_frozen AS boolean)",
            low="CAST(:low AS bigint)",
            high="CAST(:high AS bigint)",
            currency="CAST(:currency AS varchar)",
        )
    }
      AND {
        hold_sql.gate(
            held="held",
            action=_ACTION,
            transfer=_TRANSFER,
            wallet="w.wallet_id",
            amount="CAST(:amount AS bigint)",
            currency="CAST(:currency AS varchar)",
        )
    }
    RETURNING w.wallet_id, w.currency, w.balance, w.status, w.version, w.created_at,
              w.updated_at
), logged AS (
    INSERT INTO wallet_events (event_id, wallet_id, sequence, type, amount, balance_after,
                               currency, transfer_id, request_id, audit_id, occurred_at)
    SELECT CAST(:event_id AS varchar), m.wallet_id, m.version, CAST(:event_type AS varchar),
           CAST(:amount AS bigint), m.balance, m.currency, {_TRANSFER},
           CAST(:request_id AS varchar), CAST(:audit_id AS varchar), m.updated_at
    FROM moved AS m
    RETURNING event_id
), opened AS (
    INSERT INTO transfer_holds ({hold_sql.columns()}, created_at, updated_at)
    SELECT {_TRANSFER}, m.wallet_id, CAST(:to_wallet_id AS varchar), CAST(:amount AS bigint),
           m.currency, '{holds.OPEN}', m.updated_at, m.updated_at
    FROM moved AS m
    WHERE {_ACTION} = '{holds.HoldAction.OPEN.code}'
    RETURNING transfer_id
), settled AS (
    UPDATE transfer_holds AS h
    SET state = {hold_sql.settled_state(_ACTION)}, updated_at = m.updated_at
    FROM moved AS m
    WHERE h.transfer_id = {_TRANSFER} AND {_ACTION} IN ({hold_sql.SETTLING_CODES})
    RETURNING h.transfer_id
)
SELECT (SELECT count(*) FROM claim) AS claimed, m.*
FROM (SELECT 1) AS one LEFT JOIN moved AS m ON true
"""
)

PG_FINISH = text(
    """
WITH queued AS (
    INSERT INTO outbox (message_id, routing_key, message_type, payload, status, attempts,
                        created_at, traceparent)
    VALUES (:message_id, :routing_key, :message_type, :payload, :status, :attempts,
            :created_at, :traceparent)
)
UPDATE idempotency_records SET status_code = 'OK', response = :response
WHERE scope = :scope AND request_id = :request_id
"""
)


@dataclass(frozen=True)
class FastMove:
    claimed: bool
    wallet: domain.Wallet | None  # set when the balance moved


async def move(
    conn: AsyncConnection, command: MoveCommand, event_id: str, now: datetime
) -> FastMove:
    """Run :data:`PG_MOVE` for ``command``."""
    row = (
        await conn.execute(
            PG_MOVE,
            {
                **movement_sql.parameters(command.movement, command.amount, command.currency),
                "scope": command.scope,
                "request_id": command.request_id,
                "fingerprint": command.fingerprint,
                "pending": PENDING,
                "now": now,
                "wallet_id": command.wallet_id,
                "event_id": event_id,
                "event_type": command.movement.event_type,
                "amount": command.amount,
                "transfer_id": command.transfer_id or None,
                "to_wallet_id": command.to_wallet_id,
                "hold_action": command.hold_code,
                "audit_id": command.audit_id,
            },
        )
    ).one()
    wallet = None if row.wallet_id is None else wallet_from_row(row)
    return FastMove(claimed=bool(row.claimed), wallet=wallet)


async def finish(
    conn: AsyncConnection, key: WriteKey, response: bytes, outbox_row: dict[str, Any]
) -> None:
    """Queue the outbox row and store the response, in one round trip."""
    await conn.execute(
        PG_FINISH,
        {**outbox_row, "response": response, "scope": key.scope, "request_id": key.request_id},
    )
