"""The PostgreSQL single-request fast path of a balance change: two statements.

:data:`_PG_MOVE` claims the idempotency key, locks the transfer's hold when the step
settles one, conditionally moves the balance (the ``WHERE`` clause is
``domain.balance_bounds`` plus the status and currency rules plus the hold gate of
:mod:`wallet_service.hold_sql`; PostgreSQL re-checks it on the latest row version
after waiting for a lock, so there is no lost update), appends the event with
sequence = the new version, and opens or settles the hold, all in one round trip. It
always returns one row: ``claimed`` says whether the key was ours, the wallet columns
are NULL when the change did not apply (the caller then runs the portable path in the
same transaction, which locks the rows and asks the domain why). :data:`_PG_FINISH`
queues the outbox row and stores the response.

Event times come from ``clock_timestamp()`` taken after the row lock, never earlier
than the previous change, so a wallet's events are ordered in time as in sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_service import domain, hold_sql, holds, repository
from wallet_service.moves import MoveCommand

_ACTION = "CAST(:hold_action AS varchar)"
_TRANSFER = "CAST(:transfer_id AS varchar)"

_PG_MOVE = text(
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
      AND (w.status = 'ACTIVE' OR CAST(:allow_frozen AS boolean))
      AND w.balance BETWEEN CAST(:low AS bigint) AND CAST(:high AS bigint)
      AND (CAST(:currency AS varchar) = '' OR w.currency = CAST(:currency AS varchar))
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

_PG_FINISH = text(
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
    """Run :data:`_PG_MOVE` for ``command``."""
    low, high = domain.balance_bounds(command.movement, command.amount)
    row = (
        await conn.execute(
            _PG_MOVE,
            {
                "scope": command.scope,
                "request_id": command.request_id,
                "fingerprint": command.fingerprint,
                "pending": repository.PENDING,
                "now": now,
                "delta": command.movement.sign * command.amount,
                "allow_frozen": command.movement.allowed_when_frozen,
                "low": low,
                "high": high,
                "currency": command.currency,
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
    wallet = None if row.wallet_id is None else repository.wallet_from_row(row)
    return FastMove(claimed=bool(row.claimed), wallet=wallet)


async def finish(
    conn: AsyncConnection,
    command: MoveCommand,
    response: bytes,
    outbox_row: dict[str, Any],
) -> None:
    """Queue the outbox row and store the response, in one round trip."""
    await conn.execute(
        _PG_FINISH,
        {
            **outbox_row,
            "response": response,
            "scope": command.scope,
            "request_id": command.request_id,
        },
    )
