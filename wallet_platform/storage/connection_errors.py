"""Telling "the database is unreachable" from "this statement is wrong".

An unreachable database is ``UnavailableError`` (``UNAVAILABLE``: the caller may retry);
anything else is a bug or bad input and passes through unchanged. Shared by the engine
handle (``database``), the units of work and the processes that retry their loops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import DBAPIError, OperationalError

from wallet_platform.errors import UnavailableError

# PostgreSQL SQLSTATEs after which the transaction was rolled back and running it again
# is safe: serialization failure, deadlock, lock timeout, statement timeout / cancel.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014"})


def is_contention(error: BaseException) -> bool:
    """True when the database was busy, not wrong: a transient SQLSTATE (above) or
    SQLite's lock. The transaction was rolled back; the same work may simply retry."""
    original = error.orig if isinstance(error, DBAPIError) else error
    if getattr(original, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(original)


def is_connection_error(error: BaseException) -> bool:
    """True when the database itself is unreachable (as opposed to a bad statement)."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OperationalError):
        text = str(error.orig).lower()
        return any(
            marker in text
            for marker in ("connection", "could not connect", "server closed", "terminating")
        )
    return isinstance(error, ConnectionError | OSError)


@asynccontextmanager
async def translate_connection_errors() -> AsyncIterator[None]:
    try:
        yield
    except (DBAPIError, OSError) as error:
        if is_connection_error(error):
            raise UnavailableError(f"database unavailable: {type(error).__name__}") from error
        raise
