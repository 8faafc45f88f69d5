"""Structured logging: one JSON object per line (or readable console lines).

Request-scoped identifiers (request id, transfer id, audit id) live in context
variables so every log line written while serving a call carries them without
threading them through every function. While tracing is on, every line written inside
a span also carries ``trace_id`` and ``span_id`` (``tracing`` registers them with
:func:`add_context_source`), so a trace and its log lines find each other.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
transfer_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "transfer_id", default=None
)
audit_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("audit_id", default=None)

_CONTEXT_VARS = {
    "request_id": request_id_var,
    "transfer_id": transfer_id_var,
    "audit_id": audit_id_var,
}
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# More fields for every line, each from a callable of the current context.
_CONTEXT_SOURCES: list[Callable[[], dict[str, str]]] = []


def add_context_source(source: Callable[[], dict[str, str]]) -> None:
    """Have every log line carry ``source()``'s fields too (added once per source)."""
    if source not in _CONTEXT_SOURCES:
        _CONTEXT_SOURCES.append(source)


@contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    """Bind request-scoped ids for the duration of a block."""
    tokens = [(_CONTEXT_VARS[key], _CONTEXT_VARS[key].set(value)) for key, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _context_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, var in _CONTEXT_VARS.items():
        value = var.get()
        if value:
            fields[key] = value
    for source in _CONTEXT_SOURCES:
        fields.update(source())
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_context_fields(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class ConsoleFormatter(logging.Formatter):
    """Readable lines for people: time level logger message key=value..."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        extra = " ".join(f"{k}={v}" for k, v in _context_fields(record).items())
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extra:
            line += f"  {extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO", fmt: str = "json", log_file: str = "") -> None:
    """Configure the root logger once per process (stderr, plus a rotated file if asked)."""
    formatter: logging.Formatter = ConsoleFormatter() if fmt == "console" else JsonFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(
            logging.handlers.RotatingFileHandler(log_file, maxBytes=50_000_000, backupCount=5)
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty libraries: keep their warnings, drop their per-message info lines.
    for noisy in ("aio_pika", "aiormq", "alembic.runtime.migration", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
