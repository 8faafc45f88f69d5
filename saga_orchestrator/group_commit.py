"""Group commit of saga writes on PostgreSQL: many sagas' writes in one statement.

The orchestrator writes three times per transfer (CreateTransfer's insert, then one
``finish_step`` per step boundary), each a short statement whose cost is mostly per
*statement*: the pool checkout, SQLAlchemy's execution machinery, the round trip, the
commit's WAL flush. When several sagas write at the same time, :class:`SagaGroupCommitter`
sends their writes together as ONE statement of data-modifying CTEs over the rows of
each kind (one JSON document per kind, read by ``json_to_recordset``), in autocommit
(one statement is one transaction): the same idea as the wallet service's
``wallet_service/adapters/group_commit.py``, for the saga tables.

Each saga keeps its own guarantees and outcome:

- an insert is ``ON CONFLICT DO NOTHING``; a saga whose row was not created gets
  :class:`~saga_orchestrator.repository.DuplicateRequestError`, as a failed single
  insert did (CreateTransfer then answers it as a replay);
- a ``finish_step`` is fenced per saga: the ``UPDATE`` of ``transfers`` matches only
  rows still leased by the writer in the state it read, and every other part of that
  saga's write (its step rows, its milestone outbox row) is joined to the ids that
  update returned. A saga whose fence does not match writes nothing and gets
  :class:`~saga_orchestrator.repository.LeaseLostError`, whatever the rest of the
  batch does;
- if the statement fails as a whole: a database that cannot be reached fails every
  write of the batch with that error (as it would have failed each alone); any other
  error (one bad row) makes every write run again alone, so only the write that causes
  it sees it. Nothing of a failed statement was committed.

Batches form naturally: at most ``max_in_flight`` statements run at once; writes that
arrive meanwhile queue and leave together in the next one (a lone write at low load
goes at once, in a batch of one). A batch holds each transfer and each request_id at
most once, so one statement never touches a row twice. Rows are inserted in
request_id order, so two replicas' batches cannot deadlock on the unique key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text

from wallet_platform.errors import UnavailableError
from wallet_platform.storage.batching import BatchScheduler
from wallet_platform.storage.database import Database

log = logging.getLogger(__name__)

# The columns of each row group (JSON object keys), in the order of the tuples writes carry.
INSERT_COLUMNS = (
    "transfer_id",
    "request_id",
    "fingerprint",
    "from_wallet_id",
    "to_wallet_id",
    "amount",
    "currency",
    "state",
    "attempts",
    "lease_owner",
    "lease_expires_at",
    "audit_id",
    "created_at",
    "updated_at",
    "traceparent",
)
FINISH_COLUMNS = (
    "transfer_id",
    "owner",  # the fence: still leased by this owner ...
    "state",  # ... and still in this state
    "new_state",
    "now",
    "attempts",
    "lease_expires_at",  # NULL: keep
    "release",  # terminal: lease_owner and lease_expires_at become NULL
    "failure_reason",  # NULL: keep (and keep failure_code)
    "failure_code",
    "step",  # the step that finished ...
    "outcome",  # ... its outcome
    "step_error",  # NULL: keep the step's error
    "count_next",  # the next step whose existing row counts one more call, or NULL
)
STEP_COLUMNS = (
    "transfer_id",
    "name",
    "position",
    "outcome",
    "attempts",
    "error",
    "started_at",
    "finished_at",
)
OUTBOX_COLUMNS = (
    "transfer_id",  # whose fenced write it belongs to (not stored)
    "message_id",
    "routing_key",
    "message_type",
    "payload",
    "status",
    "attempts",
    "created_at",
    "traceparent",
)


def _one_line(sql: str) -> str:
    """``sql`` with its layout collapsed to single spaces (no comments, no literals).

    psycopg caches the conversion of a query's text only up to 4,096 characters
    (``psycopg._queries.MAX_CACHED_STATEMENT_LENGTH``); the indentation alone would
    push this statement over it, costing a re-parse on every batch. A test checks the
    statement psycopg receives stays under the limit.
    """
    return " ".join(sql.split())


_WRITE_MANY = text(
    _one_line(
        """
WITH created AS (
    INSERT INTO transfers (transfer_id, request_id, fingerprint, from_wallet_id,
                           to_wallet_id, amount, currency, state, attempts, lease_owner,
                           lease_expires_at, audit_id, created_at, updated_at, traceparent)
    SELECT *
    FROM json_to_recordset(CAST(:inserts AS json)) AS i(
        transfer_id text, request_id text, fingerprint text, from_wallet_id text,
        to_wallet_id text, amount bigint, currency text, state text, attempts integer,
        lease_owner text, lease_expires_at timestamptz, audit_id text,
        created_at timestamptz, updated_at timestamptz, traceparent text)
    ORDER BY i.request_id
    ON CONFLICT DO NOTHING
    RETURNING transfer_id
), fin AS (
    SELECT *
    FROM json_to_recordset(CAST(:finishes AS json)) AS f(
        transfer_id text, owner text, state text, new_state text, now timestamptz,
        attempts integer, lease_expires_at timestamptz, release boolean,
        failure_reason text, failure_code text, step text, outcome text, step_error text,
        count_next text)
), fenced AS (
    UPDATE transfers AS t
    SET state = f.new_state,
        updated_at = f.now,
        attempts = f.attempts,
        last_error = NULL,
        next_attempt_at = NULL,
        lease_owner = CASE WHEN f.release THEN NULL ELSE t.lease_owner END,
        lease_expires_at = CASE
            WHEN f.release THEN NULL
            ELSE coalesce(f.lease_expires_at, t.lease_expires_at)
        END,
        failure_reason = coalesce(f.failure_reason, t.failure_reason),
        failure_code = CASE
            WHEN f.failure_reason IS NULL THEN t.failure_code
            ELSE f.failure_code
        END
    FROM fin AS f
    WHERE t.transfer_id = f.transfer_id AND t.lease_owner = f.owner AND t.state = f.state
    RETURNING t.transfer_id
), steps_done AS (
    UPDATE transfer_steps AS s
    SET outcome = CASE WHEN s.name = f.step THEN f.outcome ELSE s.outcome END,
        finished_at = CASE WHEN s.name = f.step THEN f.now ELSE s.finished_at END,
        error = CASE WHEN s.name = f.step THEN coalesce(f.step_error, s.error) ELSE s.error END,
        attempts = CASE WHEN s.name = f.count_next THEN s.attempts + 1 ELSE s.attempts END
    FROM fin AS f
    WHERE s.transfer_id = f.transfer_id
      AND (s.name = f.step OR s.name = f.count_next)
      AND f.transfer_id IN (SELECT transfer_id FROM fenced)
), steps_added AS (
    INSERT INTO transfer_steps (transfer_id, name, position, outcome, attempts, error,
                                started_at, finished_at)
    SELECT *
    FROM json_to_recordset(CAST(:steps AS json)) AS n(
        transfer_id text, name text, position integer, outcome text, attempts integer,
        error text, started_at timestamptz, finished_at timestamptz)
    WHERE n.transfer_id IN (SELECT transfer_id FROM created UNION ALL
                            SELECT transfer_id FROM fenced)
), milestones AS (
    INSERT INTO outbox (message_id, routing_key, message_type, payload, status, attempts,
                        created_at, traceparent)
    SELECT o.message_id, o.routing_key, o.message_type, o.payload, o.status, o.attempts,
           o.created_at, o.traceparent
    FROM json_to_recordset(CAST(:milestones AS json)) AS o(
        transfer_id text, message_id text, routing_key text, message_type text,
        payload bytea, status text, attempts integer, created_at timestamptz,
        traceparent text)
    WHERE o.transfer_id IN (SELECT transfer_id FROM fenced)
)
SELECT transfer_id FROM created
UNION ALL
SELECT transfer_id FROM fenced
"""
    )
)


@dataclass
class SagaWrite:
    """One saga's write waiting for a batch: an insert or a finish, with its rows.

    ``future`` gets True when the write was applied (created / fence held), False when
    it was not (request_id taken / lease lost or state moved on), or the error.
    """

    transfer_id: str
    request_id: str | None  # inserts: the unique key a batch holds at most once
    insert_row: tuple[Any, ...] | None = None  # INSERT_COLUMNS
    finish_row: tuple[Any, ...] | None = None  # FINISH_COLUMNS
    step_rows: Sequence[tuple[Any, ...]] = ()  # STEP_COLUMNS, new step rows
    outbox_rows: Sequence[tuple[Any, ...]] = ()  # OUTBOX_COLUMNS
    future: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future(), repr=False
    )


def _json_value(value: Any) -> str:
    """The JSON text of what ``json`` cannot encode itself, as PostgreSQL reads it back:
    a timestamp in ISO 8601 with its offset (microseconds kept), bytes as a ``bytea``
    hex literal."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    raise TypeError(f"cannot send {type(value).__name__} in a saga write")


def _records(rows: Sequence[tuple[Any, ...]], names: tuple[str, ...]) -> str:
    """``rows`` as one JSON array of objects keyed by column (``json_to_recordset``)."""
    return json.dumps(
        [dict(zip(names, row, strict=True)) for row in rows],
        separators=(",", ":"),
        default=_json_value,
    )


def batch_params(batch: Sequence[SagaWrite]) -> dict[str, str]:
    """The parameters of ``_WRITE_MANY`` for ``batch``: one JSON document per row group.

    Why JSON and not one array per column: psycopg dumps each list parameter in Python
    (finding its element type, then every element), and the 44 arrays of a batch cost
    ~230 us of CPU per statement against ~50 us for four JSON strings encoded by the
    ``json`` module's C encoder (docs/benchmarks.md); SQLAlchemy also processes four
    parameters instead of 44. PostgreSQL reads every value back with its column type's
    own input function, so the stored values are the same.
    """
    return {
        "inserts": _records([w.insert_row for w in batch if w.insert_row], INSERT_COLUMNS),
        "finishes": _records([w.finish_row for w in batch if w.finish_row], FINISH_COLUMNS),
        "steps": _records([r for w in batch for r in w.step_rows], STEP_COLUMNS),
        "milestones": _records([r for w in batch for r in w.outbox_rows], OUTBOX_COLUMNS),
    }


class SagaGroupCommitter(BatchScheduler[SagaWrite]):
    """Gathers concurrent saga writes into one statement (see the module docstring)."""

    def __init__(self, db: Database, *, max_batch: int = 64, max_in_flight: int = 1) -> None:
        super().__init__(
            max_batch=max_batch, max_in_flight=max_in_flight, task_name="saga-group-commit"
        )
        self._db = db
        # Counters for benchmarks and tests.
        self.batches = 0
        self.batched_writes = 0

    async def submit(self, write: SagaWrite) -> bool:
        """Whether the write applied (see :class:`SagaWrite`); raises the batch's error."""
        self._enqueue(write)
        return await write.future

    def conflict_keys(self, item: SagaWrite) -> list[str]:
        """Each transfer and each request_id at most once per batch."""
        keys = [f"transfer:{item.transfer_id}"]
        if item.request_id is not None:
            keys.append(f"request:{item.request_id}")
        return keys

    async def _run(self, batch: list[SagaWrite]) -> None:
        try:
            applied = await self._execute(batch)
        except asyncio.CancelledError:
            _fail(batch, UnavailableError("saga write cancelled (shutting down)"))
            raise
        except Exception as error:
            if len(batch) == 1 or isinstance(error, UnavailableError):
                _fail(batch, error)
                return
            # Nothing of the statement was committed. One write may be what failed it:
            # each runs alone, so only that one sees the error.
            log.warning(
                "saga group commit of %d writes failed (%s): running them singly",
                len(batch),
                type(error).__name__,
            )
            await asyncio.gather(*(self._run([write]) for write in batch))
            return
        self.batches += 1
        self.batched_writes += len(batch)
        for write in batch:
            if not write.future.done():
                write.future.set_result(write.transfer_id in applied)

    async def _execute(self, batch: list[SagaWrite]) -> set[str]:
        async with self._db.autocommit() as conn:
            rows = await conn.execute(_WRITE_MANY, batch_params(batch))
            return {row.transfer_id for row in rows}

    async def stop(self) -> None:
        """Wait for the batches in flight (their writers are waiting for them)."""
        await self._wait_idle()


def _fail(batch: list[SagaWrite], error: BaseException) -> None:
    for write in batch:
        if not write.future.done():
            write.future.set_exception(error)
