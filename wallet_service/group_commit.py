"""Group commit on PostgreSQL: concurrent balance changes share one transaction.

Under load most of a write's cost is per *statement* and per *transaction*, not per row:
the driver round trips, SQLAlchemy's execution machinery, the asyncio wake-ups, the
commit's WAL flush. So when several requests for *different* wallets wait at the same
time, :class:`GroupCommitter` runs them as one batch: one transaction, two statements
(``_MOVE_MANY`` claims every idempotency key, locks the transfer holds the steps
settle, then the wallets, in key order, applies each conditional update (with the hold
gate of :mod:`wallet_service.hold_sql`), appends each event and opens or settles each
hold; ``_FINISH_MANY`` queues every outbox row and stores every response), whatever
the batch size. TigerBeetle's batches, in two SQL statements.

Each request keeps its own outcome and idempotency:

- a request whose key already exists (a replay, a concurrent duplicate, a reused key)
  or whose rule does not hold (unknown wallet, frozen, insufficient funds, currency
  mismatch, overflow, a hold that does not allow the step) is *not* decided in the
  batch: its claim, if the batch made one, is released in the same transaction, and
  after the commit the request runs alone through
  :class:`~wallet_service.service.WalletService`'s single-request path, which replays
  or records the exact error;
- if the batch fails as a whole (lock timeout, deadlock, connection lost), every
  request runs alone: nothing of the batch was committed, or, if the commit's fate is
  unknown, the single path finds the claimed keys and replays them.

Batches form naturally: at most ``max_in_flight`` batches run at once; requests that
arrive meanwhile queue and leave together in the next one (a lone request at low load
goes at once, in a batch of one). A batch holds each wallet, each key and each
transfer at most once; later requests for the same wallet wait for the next batch, so
one statement never changes a row twice. Lock order is fixed (keys, then holds, then
wallets, each sorted; the single path locks a hold before its wallet too), so
concurrent batches cannot deadlock on each other.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from psycopg.rows import namedtuple_row

from wallet_platform.observability import tracing
from wallet_platform.storage.batching import BatchScheduler
from wallet_platform.storage.database import Database
from wallet_service import domain, hold_sql, holds, repository
from wallet_service.moves import MoveCommand

log = logging.getLogger(__name__)

_SETTLING = f"({hold_sql.SETTLING_CODES})"

# `mine` = the requests whose key this batch claimed; `held` locks the holds they
# settle (latest versions, see hold_sql), `locked` then their wallets (the scalar
# subquery on `held` makes PostgreSQL lock the holds first).
_MOVE_MANY = f"""
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
      AND (w.status = 'ACTIVE' OR i.allow_frozen)
      AND w.balance BETWEEN i.low AND i.high
      AND (i.currency = '' OR w.currency = i.currency)
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

_FINISH_MANY = """
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


@dataclass
class MoveRequest:
    """One balance change waiting for a batch; ``future`` gets its response or None."""

    command: MoveCommand
    future: asyncio.Future[Message | None] = field(repr=False)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # The caller's trace context for its outbox row (the batch runs in another task).
    traceparent: str | None = field(default_factory=tracing.current_traceparent)


# (method, wallet, event) -> (response, stored bytes, outbox row); WalletService._response.
BuildResponse = Callable[
    [str, domain.Wallet, domain.WalletEvent], tuple[Message, bytes, dict[str, Any] | None]
]


class GroupCommitter(BatchScheduler[MoveRequest]):
    """Gathers concurrent moves into batches (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        build_response: BuildResponse,
        clock: Callable[[], datetime],
        *,
        max_batch: int = 64,
        max_in_flight: int = 1,
    ) -> None:
        super().__init__(
            max_batch=max_batch, max_in_flight=max_in_flight, task_name="wallet-group-commit"
        )
        self._db = db
        self._build_response = build_response
        self._clock = clock
        # Counters for benchmarks and tests.
        self.batches = 0
        self.batched_requests = 0

    async def submit(self, request: MoveRequest) -> Message | None:
        """The committed response, or None: then run the request on the single path."""
        self._enqueue(request)
        return await request.future

    def conflict_keys(self, item: MoveRequest) -> tuple[str, ...]:
        """Each wallet, each idempotency key and each transfer's hold at most once per
        batch, so one statement never changes a row twice."""
        command = item.command
        keys = (f"wallet:{command.wallet_id}", f"key:{command.scope}:{command.request_id}")
        if command.transfer_id:
            return (*keys, f"transfer:{command.transfer_id}")
        return keys

    async def _run(self, batch: list[MoveRequest]) -> None:
        results: dict[int, Message] = {}
        try:
            results = await self._execute(batch)
        except asyncio.CancelledError:
            _resolve(batch, results)
            raise
        except Exception as error:
            # Rolled back (or unknown): each request runs alone; idempotency decides.
            log.warning(
                "group commit of %d requests failed (%s): running them singly",
                len(batch),
                type(error).__name__,
            )
            results = {}
        self.batches += 1
        self.batched_requests += len(results)
        _resolve(batch, results)

    async def _execute(self, batch: list[MoveRequest]) -> dict[int, Message]:
        """Run the batch; the responses of the requests it applied, by position."""
        commands = [request.command for request in batch]
        bounds = [domain.balance_bounds(c.movement, c.amount) for c in commands]
        # Pipeline mode (Database.pipeline_transaction): BEGIN + _MOVE_MANY in one round
        # trip, _FINISH_MANY + COMMIT in another.
        async with self._db.pipeline_transaction() as conn:
            cursor = conn.cursor(row_factory=namedtuple_row)
            now = self._clock()
            await cursor.execute(
                _MOVE_MANY,
                {
                    "pending": repository.PENDING,
                    "now": now,
                    "scopes": [c.scope for c in commands],
                    "request_ids": [c.request_id for c in commands],
                    "fingerprints": [c.fingerprint for c in commands],
                    "wallet_ids": [c.wallet_id for c in commands],
                    "deltas": [c.movement.sign * c.amount for c in commands],
                    "lows": [low for low, _ in bounds],
                    "highs": [high for _, high in bounds],
                    "allow_frozen": [c.movement.allowed_when_frozen for c in commands],
                    "currencies": [c.currency for c in commands],
                    "event_ids": [r.event_id for r in batch],
                    "event_types": [c.movement.event_type for c in commands],
                    "amounts": [c.amount for c in commands],
                    "transfer_ids": [c.transfer_id or None for c in commands],
                    "audit_ids": [c.audit_id for c in commands],
                    "hold_actions": [c.hold_code for c in commands],
                    "to_wallet_ids": [c.to_wallet_id for c in commands],
                },
            )
            rows = await cursor.fetchall()
            responses: dict[int, Message] = {}
            stored: list[tuple[MoveCommand, bytes]] = []
            outbox_rows: list[dict[str, Any]] = []
            released: list[MoveCommand] = []
            for row in rows:
                position = row.n - 1
                request = batch[position]
                if not row.claimed:
                    continue  # replay or duplicate: the single path answers it
                if row.wallet_id is None:
                    released.append(request.command)  # the single path says why
                    continue
                wallet = repository.wallet_from_row(row)
                event = request.command.event(wallet, request.event_id)
                response, data, outbox_row = self._build_response(
                    request.command.method, wallet, event
                )
                assert outbox_row is not None
                outbox_row["traceparent"] = request.traceparent
                responses[position] = response
                stored.append((request.command, data))
                outbox_rows.append(outbox_row)
            if stored or released:
                await cursor.execute(
                    _FINISH_MANY,
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
                        "done_scopes": [c.scope for c, _ in stored],
                        "done_ids": [c.request_id for c, _ in stored],
                        "responses": [data for _, data in stored],
                    },
                )
        if outbox_rows:
            self._db.outbox_committed()  # wake the relay (no engine event on this path)
        return responses

    async def stop(self) -> None:
        """Wait for the batches in flight (their callers are waiting for them)."""
        await self._wait_idle()


def _resolve(batch: list[MoveRequest], results: dict[int, Message]) -> None:
    for position, request in enumerate(batch):
        if not request.future.done():
            request.future.set_result(results.get(position))
