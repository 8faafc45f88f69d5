"""Audit records for what walletctl itself changes, outside the gRPC servers.

The audit interceptor records every write RPC; an operator action that goes straight
to the broker or the database (``walletctl dlq replay`` / ``purge``) would leave no
trace. :class:`ActionAudit` puts those actions into the same ``audit_log`` table (the
table definition of ``wallet_platform.storage.schema``, through ``--database-url`` /
``WALLET_DATABASE_URL``), so ``walletctl audit`` lists and filters them like calls:

1. before the action, an intent row: ``status_code`` NULL and an ``error_message``
   saying no outcome was recorded. If this insert fails, the action does not run:
   an unrecorded replay or purge is worse than a delayed one;
2. after it, the same row updated with the outcome (``OK``, ``NOT_FOUND``,
   ``UNAVAILABLE``, ``CANCELLED``...), the duration, and what actually happened
   (e.g. the message ids that moved), merged into ``request_json``.

A walletctl that is killed between the two leaves the intent row, which
``walletctl audit --failed`` shows (a NULL status counts as not OK): the record never
claims an outcome it did not see.

Who: ``caller`` is the token's name when walletctl sends a token (``token:<hash>``,
the name the servers give a token without a subject; walletctl never sees the
server's subject table) followed by ``os=<user>@<host>``; ``peer`` is
``walletctl:<host>:<pid>``.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from wallet_platform.server.security import token_fingerprint
from wallet_platform.storage.connection_errors import is_connection_error
from wallet_platform.storage.schema import audit_log
from walletctl.context import OperationFailedError, UnavailableError

IN_PROGRESS = (
    "no outcome recorded: the action was started and walletctl stopped, or lost the "
    "database, before it could record how it ended"
)
MAX_TEXT = 2000


@dataclass(frozen=True)
class Operator:
    """Who runs walletctl: the OS account and host, and the token it sends, if any."""

    os_user: str
    host: str
    pid: int
    token_name: str | None

    @classmethod
    def current(cls, auth_token: str) -> Operator:
        try:
            user = getpass.getuser()
        except Exception:  # no login name (a container without a passwd entry)
            user = f"uid={os.getuid()}"
        return cls(
            os_user=user,
            host=socket.gethostname(),
            pid=os.getpid(),
            token_name=token_fingerprint(auth_token) if auth_token else None,
        )

    @property
    def caller(self) -> str:
        parts = [self.token_name] if self.token_name else []
        parts.append(f"os={self.os_user}@{self.host}")
        return " ".join(parts)[:128]

    @property
    def peer(self) -> str:
        return f"walletctl:{self.host}:{self.pid}"[:128]

    def as_dict(self) -> dict[str, Any]:
        return {
            "os_user": self.os_user,
            "host": self.host,
            "pid": self.pid,
            "token": self.token_name,
        }


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, default=str)


class ActionAudit:
    """One operator action's ``audit_log`` row: :meth:`begin`, act, :meth:`finish`."""

    def __init__(self, database_url: str, method: str, operator: Operator) -> None:
        self.database_url = database_url
        self.method = method
        self.operator = operator
        self.audit_id = str(uuid.uuid4())
        self._request: dict[str, Any] = {}
        self._engine: Engine | None = None
        self._t0 = 0.0

    def begin(self, request: dict[str, Any], refusal: str) -> None:
        """Write the intent row; raise (and so stop the action) when it cannot.

        ``refusal`` completes the error message, e.g. "nothing was purged".
        """
        from walletctl.dbutil import snapshot_engine  # URL checks, SQLite busy timeout

        self._request = {**request, "operator": self.operator.as_dict()}
        self._t0 = time.monotonic()
        self._engine = snapshot_engine(self.database_url)
        row = {
            "audit_id": self.audit_id,
            "method": self.method,
            "request_json": _dump(self._request),
            "caller": self.operator.caller,
            "peer": self.operator.peer,
            "status_code": None,
            "error_message": IN_PROGRESS,
            "started_at": datetime.now(UTC),
            "duration_ms": None,
        }
        try:
            with self._engine.begin() as conn:
                conn.execute(audit_log.insert(), row)
        except SQLAlchemyError as error:
            self.close()
            first_line = (str(getattr(error, "orig", None) or error).splitlines() or [""])[0]
            message = f"cannot write the audit record ({first_line}); {refusal}"
            if is_connection_error(error):
                raise UnavailableError(message) from None
            raise OperationFailedError(message) from None

    def finish(self, status: str, message: str | None, outcome: dict[str, Any]) -> bool:
        """Record the outcome on the intent row; False (never an exception) if it failed."""
        if self._engine is None:
            return False
        values = {
            "status_code": status,
            "error_message": message[:MAX_TEXT] if message else None,
            "duration_ms": int((time.monotonic() - self._t0) * 1000),
            "request_json": _dump({**self._request, "outcome": outcome}),
        }
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    audit_log.update().where(audit_log.c.audit_id == self.audit_id), values
                )
            return True
        except SQLAlchemyError:
            return False
        finally:
            self.close()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
