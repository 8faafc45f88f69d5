"""The group commit's two PostgreSQL statements and the unit of work that runs them.

``MOVE_MANY`` claims every idempotency key of a batch, locks the transfer holds the
steps settle, then the wallets, in key order, applies each conditional update (the
movement rule of :mod:`~wallet_service.adapters.movement_sql` and the hold gate of
:mod:`~wallet_service.adapters.hold_sql`, both built from the domain), appends each
event and opens or settles each hold. ``FINISH_MANY`` queues every outbox row, stores
every response and releases the claims of the requests the batch did not apply.
Whatever the batch size, two statements.

They run on psycopg's own connection in pipeline mode (:class:`BatchUnitOfWork`, a
:class:`~wallet_platform.storage.unit_of_work.PipelineUnitOfWork`): ``BEGIN`` travels
with ``MOVE_MANY``, ``COMMIT`` with ``FINISH_MANY``, two round trips per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import namedtuple_row

from wallet_platform.storage.unit_of_work import PipelineUnitOfWork
from wallet_service import domain, holds
from wallet_service.adapters import hold_sql, movement_sql
from wallet_service.adapters.codec import Encoded
from wallet_service.adapters.idempotency_sql import PENDING
from wallet_service.adapters.rows import wallet_from_row
from wallet_service.moves import MoveCommand

_SETTLING = f"({hold_sql.SETTLING_CODES})"

# `mine` = the requests whose key this batch claimed; `held` locks the holds they
# settle (latest versions, see hold_sql), `locked` then their wallets (the scalar
# subquery on `held` makes PostgreSQL lock the holds first).
MOVE_MANY = f"""
WITH input AS (
    SELECT *
    FROM unnest(
        CAST(%(scopes)s AS varchar[]), CAST(%(request_ids)s AS varchar[]),
        CAST(%(fingerprints)s AS varchar[]),
        CAST(%(wallet_ids)s AS varchar[]), CAST(%(deltas)s AS bigint[]),
        CAST(%(lows)s AS bigint[]), CAST(%(highs)s AS bigint[]),
        CAST(%(allow_frozen)s AS boolean[]), CAST(%(currencies)s AS varchar[]),
        CAST(%(event_ids)s AS varchar[]), CAST(%(event_types)s AS varchar[]),
        CAST(%(amounts)s AS bigint[]), CAST(%(transfer_ids)s AS varchar[]),
        CAST(%(audit_ids)s AS varchar[]), CAST(%(hold_actions)s AS varchar[]),
        CAST(%(to_wallet_ids)s AS varchar[])
    ) WITH ORDINALITY
      AS i(scope, request_id, fingerprint, wallet_id, delta, low, high, allow_frozen,
           currency, event_id, event_type, amount, transfer_id, audit_id, hold_action,
           to_wallet_id, n)
), claim AS (
    INSERT INTO idempotency_records (scope, request_id, fingerprint, status_code, created_at)
    SELECT i.scope, i.request_id, i.fingerprint, %(pending)s, %(now)s
    FROM input AS i
    ORDER BY i.scope, i.request_id
    ON CONFLICT DO NOTHING
    RETURNING scope, request_id
), mine AS MATERIALIZED (
    SELECT i.*
    FROM input AS i JOIN claim AS c ON c.scope = i.scope AND c.request_id = i.request_id
), held AS MATERIALIZED (
    SELECT {hold_sql.columns("h")}
    FROM transfer_holds AS h
    WHERE h.transfer_id IN (
        SELECT m.transfer_id FROM mine AS m WHERE m.hold_action IN {_SETTLING}
    )
    ORDER BY h.transfer_id
    FOR UPDATE
), locked AS (
    SELECT w.wallet_id
    FROM wallets AS w
    WHERE w.wallet_id IN (SELECT m.wallet_id FROM mine AS m)
      AND (SELECT count(*) FROM held) >= 0
    ORDER BY w.wallet_id
    FOR UPDATE
), moved AS (
    UPDATE wallets AS w
    SET balance = w.balance + i.delta,
        version = w.version + 1,
        updated_at = GREATEST(w.updated_at, clock_timestamp())
    FROM mine AS i
    WHERE w.wallet_id = i.wallet_id
      AND w.wallet_id = ANY (ARRAY(SELECT wallet_id FROM locked))
      AND {
    movement_sql.predicate(
        wallet="w", allow_frozen="i.allow_frozen", low="i.low", high="i.high", currency="i.currency"
    )
}
      AND {
    hold_sql.gate(
        held="held",
        action="i.hold_action",
        transfer="i.transfer_id",
        wallet="w.wallet_id",
        amount="i.amount",
        currency="i.currency",
    )
}
    RETURNING i.n, w.wallet_id, w.currency, w.balance, w.status, w.version,
              w.created_at, w.updated_at
), logged AS (
    INSERT INTO wallet_events (event_id, wallet_id, sequence, type, amount, balance_after,
                               currency, transfer_id, request_id, audit_id, occurred_at)
    SELECT i.event_id, m.wallet_id, m.version, i.event_type, i.amount, m.balance,
           m.currency, i.transfer_id, i.request_id, i.audit_id, m.updated_at
    FROM moved AS m JOIN input AS i ON i.n = m.n
    RETURNING event_id
), opened AS (
    INSERT INTO transfer_holds ({hold_sql.columns()}, created_at, updated_at)
    SELECT i.transfer_id, m.wallet_id, i.to_wallet_id, i.amount, m.currency,
           '{holds.OPEN}', m.updated_at, m.updated_at
    FROM moved AS m JOIN input AS i ON i.n = m.n
    WHERE i.hold_action = '{holds.HoldAction.OPEN.code}'
    RETURNING transfer_id
), settled AS (
    UPDATE transfer_holds AS h
    SET state = {hold_sql.settled_state("i.hold_action")}, updated_at = m.updated_at
    FROM moved AS m JOIN input AS i ON i.n = m.n
    WHERE h.transfer_id = i.transfer_id AND i.hold_action IN {_SETTLING}
    RETURNING h.transfer_id
)
SELECT i.n, (c.request_id IS NOT NULL) AS claimed,
       m.wallet_id, m.currency, m.balance, m.status, m.version, m.created_at, m.updated_at
FROM input AS i
LEFT JOIN claim AS c ON c.scope = i.scope AND c.request_id = i.request_id
LEFT JOIN moved AS m ON m.n = i.n
"""

FINISH_MANY = """
WITH queued AS (
    INSERT INTO outbox (message_id, routing_key, message_type, payload, status, attempts,
                        created_at, traceparent)
    SELECT *
    FROM unnest(
        CAST(%(message_ids)s AS varchar[]), CAST(%(routing_keys)s AS varchar[]),
        CAST(%(message_types)s AS varchar[]), CAST(%(payloads)s AS bytea[]),
        CAST(%(statuses)s AS varchar[]), CAST(%(attempts)s AS integer[]),
        CAST(%(created_ats)s AS timestamptz[]), CAST(%(traceparents)s AS varchar[])
    )
), released AS (
    DELETE FROM idempotency_records AS r
    USING unnest(CAST(%(released_scopes)s AS varchar[]), CAST(%(released_ids)s AS varchar[]))
        AS x(scope, request_id)
    WHERE r.scope = x.scope AND r.request_id = x.request_id
)
UPDATE idempotency_records AS r
SET status_code = 'OK', response = d.response
FROM unnest(CAST(%(done_scopes)s AS varchar[]), CAST(%(done_ids)s AS varchar[]),
            CAST(%(responses)s AS bytea[]))
    AS d(scope, request_id, response)
WHERE r.scope = d.scope AND r.request_id = d.request_id
"""


@dataclass(frozen=True)
class BatchRow:
    """What ``MOVE_MANY`` did with one request (``position`` in the batch)."""

    position: int
    claimed: bool  # the batch claimed the request's key
    wallet: domain.Wallet | None  # the wallet right after the change; None: not applied


class BatchUnitOfWork(PipelineUnitOfWork):
    """One batch's transaction; :meth:`move_many`, then :meth:`finish_many`, then commit."""

    async def move_many(
        self, commands: Sequence[MoveCommand], event_ids: Sequence[str], now: datetime
    ) -> list[BatchRow]:
        """Run ``MOVE_MANY`` for the batch (``event_ids[i]`` names request i's event)."""
        rules = [movement_sql.parameters(c.movement, c.amount, c.currency) for c in commands]
        cursor = self.conn.cursor(row_factory=namedtuple_row)
        await cursor.execute(
            MOVE_MANY,
            {
                "pending": PENDING,
                "now": now,
                "scopes": [c.scope for c in commands],
                "request_ids": [c.request_id for c in commands],
                "fingerprints": [c.fingerprint for c in commands],
                "wallet_ids": [c.wallet_id for c in commands],
                "deltas": [r["delta"] for r in rules],
                "lows": [r["low"] for r in rules],
                "highs": [r["high"] for r in rules],
                "allow_frozen": [r["allow_frozen"] for r in rules],
                "currencies": [r["currency"] for r in rules],
                "event_ids": list(event_ids),
                "event_types": [c.movement.event_type for c in commands],
                "amounts": [c.amount for c in commands],
                "transfer_ids": [c.transfer_id or None for c in commands],
                "audit_ids": [c.audit_id for c in commands],
                "hold_actions": [c.hold_code for c in commands],
                "to_wallet_ids": [c.to_wallet_id for c in commands],
            },
        )
        return [
            BatchRow(
                row.n - 1,
                bool(row.claimed),
                None if row.wallet_id is None else wallet_from_row(row),
            )
            for row in await cursor.fetchall()
        ]

    async def finish_many(
        self,
        done: Sequence[tuple[MoveCommand, Encoded]],
        released: Sequence[MoveCommand],
    ) -> None:
        """Queue the outbox rows and store the responses of ``done``; release the keys
        of ``released`` (claimed, not applied: the single path decides them)."""
        outbox_rows = [e.outbox_row for _, e in done if e.outbox_row is not None]
        await self.conn.cursor().execute(
            FINISH_MANY,
            {
                "message_ids": [o["message_id"] for o in outbox_rows],
                "routing_keys": [o["routing_key"] for o in outbox_rows],
                "message_types": [o["message_type"] for o in outbox_rows],
                "payloads": [o["payload"] for o in outbox_rows],
                "statuses": [o["status"] for o in outbox_rows],
                "attempts": [o["attempts"] for o in outbox_rows],
                "created_ats": [o["created_at"] for o in outbox_rows],
                "traceparents": [o["traceparent"] for o in outbox_rows],
                "released_scopes": [c.scope for c in released],
                "released_ids": [c.request_id for c in released],
                "done_scopes": [c.scope for c, _ in done],
                "done_ids": [c.request_id for c, _ in done],
                "responses": [e.response for _, e in done],
            },
        )
