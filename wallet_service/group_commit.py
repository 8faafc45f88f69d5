"""Group commit on PostgreSQL: concurrent balance changes share one transaction.

Under load most of a write's cost is per *statement* and per *transaction*, not per row:
the driver round trips, SQLAlchemy's execution machinery, the asyncio wake-ups, the
commit's WAL flush. So when several requests for *different* wallets wait at the same
time, :class:`GroupCommitter` runs them as one batch: one transaction, two statements
(``_MOVE_MANY`` claims every idempotency key, locks the wallets in key order, applies
each conditional update and appends each event; ``_FINISH_MANY`` queues every outbox
row and stores every response), whatever the batch size. TigerBeetle's batches, in
two SQL statements.

Each request keeps its own outcome and idempotency:

- a request whose key already exists (a replay, a concurrent duplicate, a reused key)
  or whose rule does not hold (unknown wallet, frozen, insufficient funds, currency
  mismatch, overflow) is *not* decided in the batch: its claim, if the batch made one,
  is released in the same transaction, and after the commit the request runs alone
  through :class:`~wallet_service.service.WalletService`'s single-request path, which
  replays or records the exact error as before;
- if the batch fails as a whole (lock timeout, deadlock, connection lost), every
  request runs alone: nothing of the batch was committed, or, if the commit's fate is
  unknown, the single path finds the claimed keys and replays them.

Batches form naturally: at most ``max_in_flight`` batches run at once; requests that
arrive meanwhile queue and leave together in the next one (a lone request at low load
goes at once, in a batch of one). A batch holds each wallet and each key at most once;
later requests for the same wallet wait for the next batch, so one statement never
updates a row twice. Lock order is fixed (keys sorted, wallets sorted), so concurrent
batches cannot deadlock on each other.
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

from wallet_platform.storage.batching import BatchScheduler
from wallet_platform.storage.database import Database
from wallet_service import domain, repository

log = logging.getLogger(__name__)

SCOPE = "wallet"
PENDING = "PENDING"

_MOVE_MANY = """
WITH input AS (
    SELECT *
    FROM unnest(
        CAST(%(request_ids)s AS varchar[]), CAST(%(fingerprints)s AS varchar[]),
        CAST(%(wallet_ids)s AS varchar[]), CAST(%(deltas)s AS bigint[]),
        CAST(%(lows)s AS bigint[]), CAST(%(highs)s AS bigint[]),
        CAST(%(allow_frozen)s AS boolean[]), CAST(%(currencies)s AS varchar[]),
        CAST(%(event_ids)s AS varchar[]), CAST(%(event_types)s AS varchar[]),
        CAST(%(amounts)s AS bigint[]), CAST(%(transfer_ids)s AS varchar[]),
        CAST(%(audit_ids)s AS varchar[])
    ) AS i(request_id, fingerprint, wallet_id, delta, low, high, allow_frozen, currency,
           event_id, event_type, amount, transfer_id, audit_id)
), claim AS (
    INSERT INTO idempotency_records (scope, request_id, fingerprint, status_code, created_at)
    SELECT %(scope)s, i.request_id, i.fingerprint, %(pending)s, %(now)s
    FROM input AS i
    ORDER BY i.request_id
    ON CONFLICT DO NOTHING
    RETURNING request_id
), locked AS (
    SELECT w.wallet_id
    FROM wallets AS w
    WHERE w.wallet_id IN (
        SELECT i.wallet_id FROM input AS i JOIN claim AS c ON c.request_id = i.request_id
    )
    ORDER BY w.wallet_id
    FOR UPDATE
), moved AS (
    UPDATE wallets AS w
    SET balance = w.balance + i.delta,
        version = w.version + 1,
        updated_at = GREATEST(w.updated_at, clock_timestamp())
    FROM input AS i
    WHERE w.wallet_id = i.wallet_id
      AND w.wallet_id = ANY (ARRAY(SELECT wallet_id FROM locked))
      AND i.request_id IN (SELECT request_id FROM claim)
      AND (w.status = 'ACTIVE' OR i.allow_frozen)
      AND w.balance BETWEEN i.low AND i.high
      AND (i.currency = '' OR w.currency = i.currency)
    RETURNING i.request_id, w.wallet_id, w.currency, w.balance, w.status, w.version,
              w.created_at, w.updated_at
), logged AS (
    INSERT INTO wallet_events (event_id, wallet_id, sequence, type, amount, balance_after,
                               currency, transfer_id, request_id, audit_id, occurred_at)
    SELECT i.event_id, m.wallet_id, m.version, i.event_type, i.amount, m.balance,
           m.currency, i.transfer_id, i.request_id, i.audit_id, m.updated_at
    FROM moved AS m JOIN input AS i ON i.request_id = m.request_id
    RETURNING event_id
)
SELECT i.request_id AS key, (c.request_id IS NOT NULL) AS claimed,
       m.wallet_id, m.currency, m.balance, m.status, m.version, m.created_at, m.updated_at
FROM input AS i
LEFT JOIN claim AS c ON c.request_id = i.request_id
LEFT JOIN moved AS m ON m.request_id = i.request_id
"""

_FINISH_MANY = """
WITH queued AS (
    INSERT INTO outbox (message_id, routing_key, message_type, payload, status, attempts,
                        created_at)
    SELECT *
    FROM unnest(
        CAST(%(message_ids)s AS varchar[]), CAST(%(routing_keys)s AS varchar[]),
        CAST(%(message_types)s AS varchar[]), CAST(%(payloads)s AS bytea[]),
        CAST(%(statuses)s AS varchar[]), CAST(%(attempts)s AS integer[]),
        CAST(%(created_ats)s AS timestamptz[])
    )
), released AS (
    DELETE FROM idempotency_records
    WHERE scope = %(scope)s AND request_id = ANY (CAST(%(released)s AS varchar[]))
)
UPDATE idempotency_records AS r
SET status_code = 'OK', response = d.response
FROM unnest(CAST(%(done_ids)s AS varchar[]), CAST(%(responses)s AS bytea[]))
    AS d(request_id, response)
WHERE r.scope = %(scope)s AND r.request_id = d.request_id
"""


@dataclass
class MoveRequest:
    """One balance change waiting for a batch; ``future`` gets its response or None."""

    method: str
    movement: domain.Movement
    wallet_id: str
    amount: int
    request_id: str
    fingerprint: str
    transfer_id: str
    currency: str
    audit_id: str | None
    future: asyncio.Future[Message | None] = field(repr=False)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))


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

    def conflict_keys(self, item: MoveRequest) -> tuple[str, str]:
        """Each wallet and each idempotency key at most once per batch."""
        return (f"wallet:{item.wallet_id}", f"key:{item.request_id}")

    async def _run(self, batch: list[MoveRequest]) -> None:
        results: dict[str, Message] = {}
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

    async def _execute(self, batch: list[MoveRequest]) -> dict[str, Message]:
        by_key = {request.request_id: request for request in batch}
        bounds = [domain.balance_bounds(r.movement, r.amount) for r in batch]
        # Pipeline mode (Database.pipeline_transaction): BEGIN + _MOVE_MANY in one round
        # trip, _FINISH_MANY + COMMIT in another.
        async with self._db.pipeline_transaction() as conn:
            cursor = conn.cursor(row_factory=namedtuple_row)
            now = self._clock()
            await cursor.execute(
                _MOVE_MANY,
                {
                    "scope": SCOPE,
                    "pending": PENDING,
                    "now": now,
                    "request_ids": [r.request_id for r in batch],
                    "fingerprints": [r.fingerprint for r in batch],
                    "wallet_ids": [r.wallet_id for r in batch],
                    "deltas": [r.movement.sign * r.amount for r in batch],
                    "lows": [low for low, _ in bounds],
                    "highs": [high for _, high in bounds],
                    "allow_frozen": [r.movement.allowed_when_frozen for r in batch],
                    "currencies": [r.currency for r in batch],
                    "event_ids": [r.event_id for r in batch],
                    "event_types": [r.movement.event_type for r in batch],
                    "amounts": [r.amount for r in batch],
                    "transfer_ids": [r.transfer_id or None for r in batch],
                    "audit_ids": [r.audit_id for r in batch],
                },
            )
            rows = await cursor.fetchall()
            responses: dict[str, Message] = {}
            stored: list[tuple[str, bytes]] = []
            outbox_rows: list[dict[str, Any]] = []
            released: list[str] = []
            for row in rows:
                request = by_key[row.key]
                if not row.claimed:
                    continue  # replay or duplicate: the single path answers it
                if row.wallet_id is None:
                    released.append(request.request_id)  # the single path says why
                    continue
                wallet = repository.wallet_from_row(row)
                event = domain.WalletEvent(
                    event_id=request.event_id,
                    wallet_id=wallet.wallet_id,
                    sequence=wallet.version,
                    type=request.movement.event_type,
                    amount=request.amount,
                    balance_after=wallet.balance,
                    currency=wallet.currency,
                    transfer_id=request.transfer_id or None,
                    request_id=request.request_id,
                    audit_id=request.audit_id,
                    occurred_at=wallet.updated_at,
                )
                response, data, outbox_row = self._build_response(request.method, wallet, event)
                assert outbox_row is not None
                responses[request.request_id] = response
                stored.append((request.request_id, data))
                outbox_rows.append(outbox_row)
            if stored or released:
                await cursor.execute(
                    _FINISH_MANY,
                    {
                        "scope": SCOPE,
                        "message_ids": [o["message_id"] for o in outbox_rows],
                        "routing_keys": [o["routing_key"] for o in outbox_rows],
                        "message_types": [o["message_type"] for o in outbox_rows],
                        "payloads": [o["payload"] for o in outbox_rows],
                        "statuses": [o["status"] for o in outbox_rows],
                        "attempts": [o["attempts"] for o in outbox_rows],
                        "created_ats": [o["created_at"] for o in outbox_rows],
                        "released": released,
                        "done_ids": [key for key, _ in stored],
                        "responses": [data for _, data in stored],
                    },
                )
        if outbox_rows:
            self._db.outbox_committed()  # wake the relay (no engine event on this path)
        return responses

    async def stop(self) -> None:
        """Wait for the batches in flight (their callers are waiting for them)."""
        await self._wait_idle()


def _resolve(batch: list[MoveRequest], results: dict[str, Message]) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_result(results.get(request.request_id))
