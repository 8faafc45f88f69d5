"""Group commit on PostgreSQL: concurrent balance changes share one transaction.

Under load most of a write's cost is per *statement* and per *transaction*, not per row:
the driver round trips, SQLAlchemy's execution machinery, the asyncio wake-ups, the
commit's WAL flush. So when several requests for *different* wallets wait at the same
time, :class:`GroupCommitter` runs them as one batch: one transaction, two statements
(:mod:`wallet_service.adapters.pg_batch`), whatever the batch size. TigerBeetle's
batches, in two SQL statements. The committer answers each request with its domain
result (the stored response and the outbox row are encoded here, by
:mod:`~wallet_service.adapters.codec`), or with None.

Each request keeps its own outcome and idempotency:

- a request whose key already exists (a replay, a concurrent duplicate, a reused key)
  or whose rule does not hold (unknown wallet, frozen, insufficient funds, currency
  mismatch, overflow, a hold that does not allow the step) is *not* decided in the
  batch: its claim, if the batch made one, is released in the same transaction, and
  after the commit the request runs alone through the service's single-request path
  (:class:`~wallet_service.service.WalletService`), which replays or records the
  exact error;
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

from wallet_platform.observability import tracing
from wallet_platform.storage.batching import BatchScheduler
from wallet_platform.storage.database import Database
from wallet_service import domain
from wallet_service.adapters import codec
from wallet_service.adapters.pg_batch import BatchUnitOfWork
from wallet_service.moves import MoveCommand

log = logging.getLogger(__name__)


@dataclass
class MoveRequest:
    """One balance change waiting for a batch; ``future`` gets its result or None."""

    command: MoveCommand
    future: asyncio.Future[domain.WriteResult | None] = field(repr=False)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # The caller's trace context for its outbox row (the batch runs in another task).
    traceparent: str | None = field(default_factory=tracing.current_traceparent)


class GroupCommitter(BatchScheduler[MoveRequest]):
    """Gathers concurrent moves into batches (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        *,
        max_batch: int = 64,
        max_in_flight: int = 1,
    ) -> None:
        super().__init__(
            max_batch=max_batch, max_in_flight=max_in_flight, task_name="wallet-group-commit"
        )
        self._db = db
        self._clock = clock
        # Counters for benchmarks and tests.
        self.batches = 0
        self.batched_requests = 0

    async def submit(self, command: MoveCommand) -> domain.WriteResult | None:
        """The committed result, or None: then run the request on the single path."""
        request = MoveRequest(command, asyncio.get_running_loop().create_future())
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
        results: dict[int, domain.WriteResult] = {}
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

    async def _execute(self, batch: list[MoveRequest]) -> dict[int, domain.WriteResult]:
        """Run the batch; the results of the requests it applied, by position."""
        commands = [request.command for request in batch]
        results: dict[int, domain.WriteResult] = {}
        done: list[tuple[MoveCommand, codec.Encoded]] = []
        released: list[MoveCommand] = []
        async with BatchUnitOfWork(self._db) as uow:
            rows = await uow.move_many(commands, [r.event_id for r in batch], self._clock())
            for row in rows:
                request = batch[row.position]
                if not row.claimed:
                    continue  # replay or duplicate: the single path answers it
                if row.wallet is None:
                    released.append(request.command)  # the single path says why
                    continue
                event = request.command.event(row.wallet, request.event_id)
                result = domain.WriteResult(row.wallet, event)
                encoded = codec.encode(request.command.method, result, request.traceparent)
                results[row.position] = codec.as_stored(result, encoded)
                done.append((request.command, encoded))
            if done or released:
                await uow.finish_many(done, released)
            await uow.commit()
        if done:
            self._db.outbox_committed()  # wake the relay (no engine event on this path)
        return results

    async def stop(self) -> None:
        """Wait for the batches in flight (their callers are waiting for them)."""
        await self._wait_idle()


def _resolve(batch: list[MoveRequest], results: dict[int, domain.WriteResult]) -> None:
    for position, request in enumerate(batch):
        if not request.future.done():
            request.future.set_result(results.get(position))
