"""Fault injection: ``WALLET_FAILPOINTS="name=action[,name=action...]"``.

Actions: ``exit`` (the process dies at once, like kill -9: no cleanup, no flush),
``error`` (raise :class:`FailpointError` there), ``sleep(MS)``. Names are listed in
docs/architecture.md (the public contract); code marks the spot with
``await failpoint("saga.after_debit")``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys

log = logging.getLogger(__name__)

_SLEEP = re.compile(r"^sleep\((\d+)\)$")
_active: dict[str, str] = {}
_configured_from: str | None = None


class FailpointError(RuntimeError):
    """Raised by a failpoint whose action is ``error``."""


def parse(spec: str) -> dict[str, str]:
    """Parse the failpoint spec; a malformed spec is a configuration error."""
    result: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, action = item.partition("=")
        name, action = name.strip(), action.strip()
        if not sep or not name or not (action in ("exit", "error") or _SLEEP.match(action)):
            raise ValueError(f"bad failpoint {item!r}: expected name=exit|error|sleep(MS)")
        result[name] = action
    return result


def configure(spec: str | None = None) -> None:
    """Activate failpoints from ``spec`` or, when None, from WALLET_FAILPOINTS."""
    global _configured_from
    spec = os.environ.get("WALLET_FAILPOINTS", "") if spec is None else spec
    _active.clear()
    _active.update(parse(spec))
    _configured_from = spec
    if _active:
        log.warning("failpoints active: %s", _active)


def _ensure_configured() -> None:
    if _configured_from is None:
        configure()


def _action(name: str) -> str | None:
    _ensure_configured()
    return _active.get(name)


def _die(name: str) -> None:
    sys.stderr.write(f"failpoint {name}: exit\n")
    sys.stderr.flush()
    os._exit(137)


async def failpoint(name: str) -> None:
    """Trigger the failpoint ``name`` if configured (async code)."""
    action = _action(name)
    if action is None:
        return
    if action == "exit":
        _die(name)
    if action == "error":
        raise FailpointError(f"failpoint {name}")
    match = _SLEEP.match(action)
    if match:
        await asyncio.sleep(int(match.group(1)) / 1000)
