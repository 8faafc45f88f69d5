"""The audit trail: one ``audit_log`` row for every write call, accepted or refused.

:func:`audit` wraps every write RPC (the one list is :data:`WRITE_METHODS`
plus :data:`WRITE_NAME_PREFIXES` for write RPCs added later). For each call it

- makes an audit id (UUID) and puts it in ``logs.audit_id_var`` while the call runs,
  so the service can stamp it on the events and transfers the call produces
  and every log line of the call carries it;
- sends it back to the client as trailing metadata ``x-audit-id``;
- records method, request, caller identity, peer, start time, duration and the
  resulting status code, including calls refused by authentication, validation,
  limits or business rules. The request is stored as redacted JSON of at most 8 KiB,
  except for calls refused before they could act: those get a fixed-size summary
  (``audit_request``), since anyone can send them with any body.

A call that arrives with ``x-audit-id`` (the orchestrator's step calls, sent by
``wallet_platform.channels``) still gets its own row, but the id it stamps on events is
the incoming one when the caller may set it (``audit_ids``: a caller holding the
``orchestrator`` role with authorisation on, a same-host peer with it off), so the
``CreateTransfer`` audit id leads to the debit, credit or refund entries in the ledger.

Rows are written off the hot path by :class:`AuditWriter`, a small batching task: the
call only appends to a backlog bounded in bytes (``audit_backlog``: refused calls'
records are dropped and counted when their share is full; write calls are refused up
front when the whole backlog is). A clean shutdown drains every pending row (the
server stops accepting calls first); if the database stays down past the drain
deadline the remaining rows are written to the log as ERROR lines rather than dropped
silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import grpc
from sqlalchemy import text

from wallet_platform import backoff
from wallet_platform.clock import Clock, utcnow
from wallet_platform.errors import ResourceExhaustedError
from wallet_platform.observability.audit_backlog import DROP_LOG_SECONDS, AuditBacklog
from wallet_platform.observability.audit_ids import AUDIT_ID_HEADER, trusted_audit_id
from wallet_platform.observability.audit_request import (
    MAX_REFUSED_MESSAGE,
    MAX_TEXT,
    REFUSED_STATUSES,
    request_json,
    request_summary,
)
from wallet_platform.observability.logs import audit_id_var
from wallet_platform.server.builder import abort_with
from wallet_platform.server.handlers import with_behaviour
from wallet_platform.server.security import caller_identity
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import audit_log

if TYPE_CHECKING:
    from wallet_platform.server.authority import Authority

log = logging.getLogger(__name__)

DEFAULT_BACKLOG_BYTES = 64 * 1024 * 1024

_WALLET = "/wallet.v1.WalletService/"
_TRANSFER = "/wallet.v1.TransferService/"

# The write RPCs: every call to one of these is audited.
WRITE_METHODS: frozenset[str] = frozenset(
    {
        _WALLET + "CreateWallet",
        _WALLET + "Deposit",
        _WALLET + "Withdraw",
        _WALLET + "FreezeWallet",
        _WALLET + "UnfreezeWallet",
        _WALLET + "DebitForTransfer",
        _WALLET + "CreditForTransfer",
        _WALLET + "RefundForTransfer",
        _TRANSFER + "CreateTransfer",
    }
)
# A wallet.v1 RPC whose name starts with one of these is a write too (e.g. a DLQ replay
# RPC added later): better an extra audit row than a missing one.
WRITE_NAME_PREFIXES = (
    "Create",
    "Deposit",
    "Withdraw",
    "Freeze",
    "Unfreeze",
    "Debit",
    "Credit",
    "Refund",
    "Replay",
    "Purge",
    "Delete",
    "Update",
    "Set",
)


class AuditBacklogFullError(ResourceExhaustedError):
    reason = "AUDIT_BACKLOG_FULL"
    retry_after = 2.0  # the backlog drains once the database takes rows again


def is_write_method(method: str) -> bool:
    if method in WRITE_METHODS:
        return True
    if not method.startswith("/wallet.v1."):
        return False
    return method.rsplit("/", 1)[-1].startswith(WRITE_NAME_PREFIXES)


def _status_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "OK" if code is None else str(code)


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


def audit(
    method: str,
    handler: grpc.RpcMethodHandler,
    writer: AuditWriter,
    authority: Authority | None = None,
    clock: Clock = utcnow,
    *,
    certificates: bool = True,
) -> grpc.RpcMethodHandler:
    """``handler`` recording each call (see the module docstring); reads pass unchanged.

    Built once per method by the plumbing interceptor (``wallet_platform.server.plumbing``),
    outside the auth check so refused calls are recorded too. ``certificates=False``
    on a plaintext server (no client certificate to name the caller by).
    """
    if not handler.unary_unary or not is_write_method(method):
        return handler
    inner = handler.unary_unary
    tokens = authority.tokens if authority else None  # names the caller

    async def audited(request: Any, context: grpc.aio.ServicerContext) -> Any:
        audit_id = str(uuid.uuid4())
        started_at = clock()
        t0 = time.perf_counter()
        context.set_trailing_metadata(((AUDIT_ID_HEADER, audit_id),))
        reset = audit_id_var.set(trusted_audit_id(context, authority) or audit_id)
        status = "OK"
        error_message: str | None = None
        try:
            if not writer.accepting_writes:
                await abort_with(
                    context,
                    AuditBacklogFullError(
                        "the audit trail cannot be written right now (database slow or "
                        "down); nothing was changed, retry later with the same request_id"
                    ),
                )
            response = await inner(request, context)
            code = context.code()
            status = _status_name(code)
            if status != "OK":
                error_message = context.details() or None
            return response
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except BaseException as error:
            code = context.code()
            status = _status_name(code) if code is not None else "UNKNOWN"
            if status == "OK":
                status = "UNKNOWN"
            error_message = context.details() or str(error) or type(error).__name__
            raise
        finally:
            audit_id_var.reset(reset)
            refused = status in REFUSED_STATUSES
            limit = MAX_REFUSED_MESSAGE if refused else MAX_TEXT
            writer.submit(
                {
                    "audit_id": audit_id,
                    "method": method,
                    "request_json": request_summary(request) if refused else request_json(request),
                    "caller": caller_identity(context, tokens, certificates=certificates)[:128],
                    "peer": (context.peer() or "")[:128],
                    "status_code": status,
                    "error_message": error_message[:limit] if error_message else None,
                    "started_at": started_at,
                    "duration_ms": int((time.perf_counter() - t0) * 1000),
                },
                refused=refused,
            )

    return with_behaviour(handler, audited)
