"""What every command handler gets: parsed arguments, output streams, clients.

Handlers return an exit code; they never call ``sys.exit`` and never print errors
themselves for failed RPCs (``cli.main`` turns exceptions into the documented
exit codes and one readable line, or a JSON error object with ``--json``).
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from walletctl import render
from walletctl.client import ClientConfig, Clients


class UsageError(Exception):
    """Bad input detected by walletctl itself (exit 2)."""


class UnavailableError(Exception):
    """A backend (database, broker) could not be reached (exit 3)."""


class OperationFailedError(Exception):
    """The operation ran but did not succeed (exit 1)."""


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO
    err: TextIO
    config: ClientConfig
    database_url: str
    amqp_url: str
    _clients: Clients | None = field(default=None, repr=False)
    # Set by write commands so a failure report can repeat it for the retry.
    request_id: str | None = None

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def clients(self) -> Clients:
        if self._clients is None:
            self._clients = Clients(self.config)
        return self._clients

    def call(self, service: str, method: str, request: Any) -> Any:
        return self.clients.call(service, method, request)

    @property
    def audit_id(self) -> str | None:
        """The audit id the server gave the last call (audited writes only)."""
        return self._clients.last_audit_id if self._clients is not None else None

    def close(self) -> None:
        if self._clients is not None:
            self._clients.close()

    def emit(self, data: Any, text: Callable[[], str] | str) -> None:
        """JSON for scripts, or the human rendering."""
        if self.json:
            render.dump_json(data, self.out)
            return
        rendered = text() if callable(text) else text
        self.out.write(rendered.rstrip("\n") + "\n")

    def note(self, message: str) -> None:
        """A remark for the human at the terminal (stderr: never pollutes --json)."""
        self.err.write(message.rstrip("\n") + "\n")

    def request_id_for(self, given: str | None) -> str:
        """The idempotency key: the operator's, or a fresh one announced for retries."""
        if given:
            self.request_id = given
            return given
        self.request_id = f"walletctl-{uuid.uuid4()}"
        self.note(f"request id: {self.request_id} (retry with --request-id {self.request_id})")
        return self.request_id
