"""The audit rows waiting for the database, bounded in bytes.

While the database is slow or down, audit rows wait in memory. The backlog holds at
most about ``max_bytes`` (``WALLET_AUDIT_BACKLOG_BYTES``), counted per row as the
length of its text plus :data:`ROW_OVERHEAD_BYTES` for the Python objects:

- **refused calls** (no token, wrong role, bad input, a limit: anyone can send
  them, as fast as they like) may fill at most :data:`REFUSED_SHARE` of it; past that
  their records are dropped and counted (``wallet_audit_dropped_records_total``, and a
  log line ``N audit records of refused calls dropped`` at most every
  :data:`DROP_LOG_SECONDS`). An unauthenticated flood can therefore never use the room
  that accepted writes need;
- **write calls** are never dropped: once the backlog is full, new write calls are
  refused up front (RESOURCE_EXHAUSTED, ``AUDIT_BACKLOG_FULL``) before they change
  anything, because a money movement without its audit record is worse than a retry.
  The calls already running finish and add their rows, so the backlog may exceed
  ``max_bytes`` by at most those (bounded by ``WALLET_MAX_UNARY_CALLS`` rows of at
  most ~10 KB). A batch call adds a row per item (up to 1,000), so it **reserves**
  room for them before it runs (:meth:`AuditBacklog.reserve`) and is refused like a
  write call when there is none; reservations count towards ``full``, so concurrent
  batches cannot overshoot the bound together.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from wallet_platform.observability.limit_metrics import AUDIT_BACKLOG_BYTES, AUDIT_DROPPED

log = logging.getLogger(__name__)

ROW_OVERHEAD_BYTES = 512  # the dict, its datetime and int, the string headers (measured)
REFUSED_SHARE = 0.5
DROP_LOG_SECONDS = 10.0


def row_bytes(row: dict[str, Any]) -> int:
    """About how much memory ``row`` holds."""
    text = sum(len(value) for value in row.values() if isinstance(value, str))
    return text + ROW_OVERHEAD_BYTES


class AuditBacklog:
    """Rows in submission order with their byte count (see the module docstring)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.rows: list[dict[str, Any]] = []
        self._sizes: list[int] = []
        self.bytes = 0
        self.reserved = 0  # room promised to running batch calls for their item rows
        self.dropped = 0  # refused-call records dropped since start
        self._dropped_unreported = 0
        self._last_report = float("-inf")  # the first drop is reported at once

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def full(self) -> bool:
        """True when write calls must be refused until the writer catches up."""
        return self.bytes + self.reserved >= self.max_bytes

    def reserve(self, size: int) -> bool:
        """Promise ``size`` bytes to a running batch call; False when they do not fit."""
        if self.bytes + self.reserved + size > self.max_bytes:
            return False
        self.reserved += size
        return True

    def release(self, size: int) -> None:
        """Give back a reservation (the batch's rows are in the backlog, or it ended)."""
        self.reserved -= size

    def add(self, row: dict[str, Any], *, refused: bool) -> bool:
        """Queue ``row``; a refused call's row is dropped (False) when its share is used."""
        size = row_bytes(row)
        if refused and self.bytes + size > self.max_bytes * REFUSED_SHARE:
            self.dropped += 1
            self._dropped_unreported += 1
            AUDIT_DROPPED.inc()
            self.report_drops()
            return False
        self.rows.append(row)
        self._sizes.append(size)
        self.bytes += size
        AUDIT_BACKLOG_BYTES.inc(size)
        return True

    def remove_first(self, count: int) -> None:
        """Forget the ``count`` oldest rows (written, or given up on)."""
        freed = sum(self._sizes[:count])
        del self.rows[:count]
        del self._sizes[:count]
        self.bytes -= freed
        AUDIT_BACKLOG_BYTES.dec(freed)

    def report_drops(self, *, force: bool = False) -> None:
        """Log the dropped records not yet reported, at most every DROP_LOG_SECONDS."""
        if not self._dropped_unreported:
            return
        now = time.monotonic()
        if not force and now - self._last_report < DROP_LOG_SECONDS:
            return
        log.warning(
            "%d audit records of refused calls dropped (backlog full)",
            self._dropped_unreported,
            extra={"audit_dropped_total": self.dropped},
        )
        self._dropped_unreported = 0
        self._last_report = now
