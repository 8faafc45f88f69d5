"""The audit trail's store: :class:`AuditWriter` writes ``audit_log`` rows in batches.

The rows come from the server's audit layer (``wallet_platform.server.audit_calls``),
one for every write call, accepted or refused. Rows are written off the hot path by
:class:`AuditWriter`, a small batching task: the call only appends to a backlog bounded
in bytes (``audit_backlog``: refused calls' records are dropped and counted when their
share is full; write calls are refused up front when the whole backlog is). A clean
shutdown drains every pending row (the server stops accepting calls first); if the
database stays down past the drain deadline the remaining rows are written to the log
as ERROR lines rather than dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import Any

from sqlalchemy import text

from wallet_platform import backoff
from wallet_platform.observability.audit_backlog import DROP_LOG_SECONDS, AuditBacklog
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import audit_log

log = logging.getLogger(__name__)

DEFAULT_BACKLOG_BYTES = 64 * 1024 * 1024

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("audit_id", "varchar"),
    ("method", "varchar"),
    ("request_json", "text"),
    ("caller", "varchar"),
    ("peer", "varchar"),
    ("status_code", "varchar"),
    ("error_message", "text"),
    ("started_at", "timestamptz"),
    ("duration_ms", "integer"),
)
# A whole batch as one INSERT of unnest()ed arrays, one array per column.
_INSERT_MANY_PG = text(
    f"INSERT INTO {audit_log.name} ({', '.join(name for name, _ in _COLUMNS)}) "
    "SELECT * FROM unnest("
    + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _COLUMNS)
    + ") ON CONFLICT (audit_id) DO NOTHING"  # a batch retried after an unknown commit
)


# What an accepted call's row says besides OK (see note_outcome); one value per call.
outcome_note: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "audit_outcome_note", default=None
)


def note_outcome(text: str) -> None:
    """Put ``text`` in this call's audit row (``error_message``) although the call
    succeeded: a batch whose items were refused says how many and why, so the trail
    shows refusals that did not fail the call (``server.audit_calls`` reads it)."""
    outcome_note.set(text)


def _columns(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows -> one list per column (the parameters of :data:`_INSERT_MANY_PG`)."""
    return {name: [row.get(name) for row in batch] for name, _ in _COLUMNS}


class AuditWriter:
    """Batches audit rows into the database from a background task.

    ``submit`` never waits on the database; the rows wait in an
    :class:`~wallet_platform.observability.audit_backlog.AuditBacklog` of at most about
    ``max_bytes``. ``stop`` drains everything: it keeps retrying for ``drain_timeout``
    seconds, then logs what it could not write.

    ``linger``: how long a batch waits for more rows. A write costs about the same CPU
    for one row as for fifty (~1 ms here, mostly its round trip), and under steady load
    every linger period makes one: 20 ms meant up to 50 writes a second (~15 % of the
    wallet service's CPU at 300 deposits/s), 100 ms means at most 10.
    """

    name = "audit-writer"

    def __init__(
        self,
        db: Database,
        *,
        batch_size: int = 500,
        linger: float = 0.1,
        max_bytes: int = DEFAULT_BACKLOG_BYTES,
        drain_timeout: float = 10.0,
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self.linger = linger
        self.drain_timeout = drain_timeout
        self.backlog = AuditBacklog(max_bytes)
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Condition()
        self._submitted = 0
        self._settled = 0  # rows written, or given up on (logged)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pending(self) -> int:
        return len(self.backlog)

    @property
    def accepting_writes(self) -> bool:
        """False while the backlog is full: write calls are refused until it drains."""
        return not self.backlog.full

    def submit(self, row: dict[str, Any], *, refused: bool = False) -> None:
        """Queue a row; a refused call's row may be dropped (counted) when the backlog
        is too full for it (see ``audit_backlog``)."""
        if not self.backlog.add(row, refused=refused):
            return
        self._submitted += 1
        self._wakeup.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def flush(self, within: float = 30.0) -> None:
        """Wait until every row submitted so far is written (or given up on).

        Raises TimeoutError when the database keeps refusing the rows ``within`` seconds.
        """
        target = self._submitted

        async def settled() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self._settled >= target)

        await asyncio.wait_for(settled(), within)

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        elif self.backlog.rows:
            await self._drain_once_more()
        self.backlog.report_drops(force=True)

    async def _notify(self, count: int) -> None:
        self._settled += count
        async with self._progress:
            self._progress.notify_all()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        if self.db.is_postgres:
            # One statement in autocommit (atomic on its own): one round trip per batch
            # instead of BEGIN + a pipelined executemany + COMMIT (docs/benchmarks.md).
            async with self.db.autocommit() as conn:
                await conn.execute(_INSERT_MANY_PG, _columns(batch))
            return
        async with self.db.transaction() as conn:
            await conn.execute(audit_log.insert(), batch)

    async def _drain_once_more(self) -> None:
        while self.backlog.rows:
            batch = self.backlog.rows[: self.batch_size]
            await self._write(batch)
            self.backlog.remove_first(len(batch))
            await self._notify(len(batch))

    async def _run(self) -> None:
        failures = 0
        deadline: float | None = None
        while True:
            self.backlog.report_drops()
            if not self.backlog.rows:
                if self._stopping:
                    return
                with contextlib.suppress(TimeoutError):  # wake now and then to report drops
                    await asyncio.wait_for(self._wakeup.wait(), DROP_LOG_SECONDS)
                self._wakeup.clear()
                continue
            if not self._stopping and len(self.backlog.rows) < self.batch_size and failures == 0:
                await asyncio.sleep(self.linger)  # let a few more rows join the batch
            batch = self.backlog.rows[: self.batch_size]
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                if self._stopping:
                    deadline = deadline or time.monotonic() + self.drain_timeout
                    if time.monotonic() >= deadline:
                        for row in self.backlog.rows:
                            log.error("audit row not persisted", extra={"audit_row": row})
                        lost = len(self.backlog.rows)
                        self.backlog.remove_first(lost)
                        await self._notify(lost)
                        return
                log.warning(
                    "audit write failed (%s rows pending): %s", len(self.backlog.rows), error
                )
                await asyncio.sleep(backoff.AUDIT_WRITE.delay(failures))
                continue
            failures = 0
            self.backlog.remove_first(len(batch))
            await self._notify(len(batch))
