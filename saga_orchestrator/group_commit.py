"""Group commit of saga writes on PostgreSQL: many sagas' writes in one statement.

The orchestrator writes three times per transfer (CreateTransfer's insert, then one
``finish_step`` per step boundary), each a short statement whose cost is mostly per
*statement*: the pool checkout, SQLAlchemy's execution machinery, the round trip, the
commit's WAL flush. When several sagas write at the same time, :class:`SagaGroupCommitter`
sends their writes together as ONE statement of data-modifying CTEs over ``unnest``-ed
arrays, in autocommit (one statement is one transaction): the same idea as the wallet
service's ``wallet_service/group_commit.py``, for the saga tables.

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
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from wallet_common.db import Database
from wallet_common.errors import UnavailableError

log = logging.getLogger(__name__)

# The columns of each array group, in the order of the tuples writes carry.
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
                           lease_expires_at, audit_id, created_at, updated_at)
    SELECT *
    FROM unnest(
        CAST(:i_transfer_id AS text[]), CAST(:i_request_id AS text[]),
        CAST(:i_fingerprint AS text[]), CAST(:i_from_wallet_id AS text[]),
        CAST(:i_to_wallet_id AS text[]), CAST(:i_amount AS bigint[]),
        CAST(:i_currency AS text[]), CAST(:i_state AS text[]),
        CAST(:i_attempts AS integer[]), CAST(:i_lease_owner AS text[]),
        CAST(:i_lease_expires_at AS timestamptz[]), CAST(:i_audit_id AS text[]),
        CAST(:i_created_at AS timestamptz[]), CAST(:i_updated_at AS timestamptz[])
    ) AS i(transfer_id, request_id)
    ORDER BY i.request_id
    ON CONFLICT DO NOTHING
    RETURNING transfer_id
), fin AS (
    SELECT *
    FROM unnest(
        CAST(:f_transfer_id AS text[]), CAST(:f_owner AS text[]),
        CAST(:f_state AS text[]), CAST(:f_new_state AS text[]),
        CAST(:f_now AS timestamptz[]), CAST(:f_attempts AS integer[]),
        CAST(:f_lease_expires_at AS timestamptz[]), CAST(:f_release AS boolean[]),
        CAST(:f_failure_reason AS text[]), CAST(:f_failure_code AS text[]),
        CAST(:f_step AS text[]), CAST(:f_outcome AS text[]),
        CAST(:f_step_error AS text[]), CAST(:f_count_next AS text[])
    ) AS f(transfer_id, owner, state, new_state, now, attempts, lease_expires_at, release,
           failure_reason, failure_code, step, outcome, step_error, count_next)
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
    FROM unnest(
        CAST(:n_transfer_id AS text[]), CAST(:n_name AS text[]),
        CAST(:n_position AS integer[]), CAST(:n_outcome AS text[]),
        CAST(:n_attempts AS integer[]), CAST(:n_error AS text[]),
        CAST(:n_started_at AS timestamptz[]), CAST(:n_finished_at AS timestamptz[])
    ) AS n(transfer_id)
    WHERE n.transfer_id IN (SELECT transfer_id FROM created UNION ALL
                            SELECT transfer_id FROM fenced)
), milestones AS (
    INSERT INTO outbox (message_id, routing_key, message_type, payload, status, attempts,
                        created_at)
    SELECT o.message_id, o.routing_key, o.message_type, o.payload, o.status, o.attempts,
           o.created_at
    FROM unnest(
        CAST(:o_transfer_id AS text[]), CAST(:o_message_id AS text[]),
        CAST(:o_routing_key AS text[]), CAST(:o_message_type AS text[]),
        CAST(:o_payload AS bytea[]), CAST(:o_status AS text[]),
        CAST(:o_attempts AS integer[]), CAST(:o_created_at AS timestamptz[])
    ) AS o(transfer_id, message_id, routing_key, message_type, payload, status, attempts,
           created_at)
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


def _columns(
    rows: Sequence[tuple[Any, ...]], names: tuple[str, ...], prefix: str
) -> dict[str, list[Any]]:
    """``rows`` transposed into one array parameter per column (empty arrays when none)."""
    if not rows:
        return {f"{prefix}_{name}": [] for name in names}
    return {
        f"{prefix}_{name}": list(values)
        for name, values in zip(names, zip(*rows, strict=True), strict=True)
    }


def batch_params(batch: Sequence[SagaWrite]) -> dict[str, Any]:
    """The array parameters of ``_WRITE_MANY`` for ``batch``."""
    params: dict[str, Any] = {}
    params.update(_columns([w.insert_row for w in batch if w.insert_row], INSERT_COLUMNS, "i"))
    params.update(_columns([w.finish_row for w in batch if w.finish_row], FINISH_COLUMNS, "f"))
    params.update(_columns([r for w in batch for r in w.step_rows], STEP_COLUMNS, "n"))
    params.update(_columns([r for w in batch for r in w.outbox_rows], OUTBOX_COLUMNS, "o"))
    return params


class SagaGroupCommitter:
    """Gathers concurrent saga writes into one statement (see the module docstring)."""

    def __init__(self, db: Database, *, max_batch: int = 64, max_in_flight: int = 1) -> None:
        self._db = db
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: list[SagaWrite] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Counters for benchmarks and tests.
        self.batches = 0
        self.batched_writes = 0

    async def submit(self, write: SagaWrite) -> bool:
        """Whether the write applied (see :class:`SagaWrite`); raises the batch's error."""
        self._queue.append(write)
        self._kick()
        return await write.future

    def _kick(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            batch = self._take_batch()
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._run(batch), name="saga-group-commit"
            )
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        self._kick()

    def _take_batch(self) -> list[SagaWrite]:
        """Up to ``max_batch`` queued writes, each transfer and request_id at most once."""
        batch: list[SagaWrite] = []
        left: list[SagaWrite] = []
        keys: set[str] = set()
        for write in self._queue:
            if write.future.done():  # the writer went away (cancelled) before its turn
                continue
            own = {write.transfer_id}
            if write.request_id is not None:
                own.add(f"request:{write.request_id}")
            if len(batch) < self.max_batch and not own & keys:
                batch.append(write)
                keys |= own
            else:
                left.append(write)
        self._queue = left
        return batch

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
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _fail(batch: list[SagaWrite], error: BaseException) -> None:
    for write in batch:
        if not write.future.done():
            write.future.set_exception(error)
