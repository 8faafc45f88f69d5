"""Whose ``x-audit-id`` a server honours.

The orchestrator sends the ``CreateTransfer`` audit id as ``x-audit-id`` on its saga
step calls, so the ledger entries of a transfer carry it. Any caller could send the
header, though, and stamp its own writes with somebody else's id. So it is honoured
only from a caller that can be the orchestrator:

- with authorisation on (tokens or certificate roles): a caller holding the
  ``orchestrator`` role (or ``admin``);
- with authorisation off: a caller on the same host (a loopback or Unix-socket peer), which
  covers the all-in-one ``wallet-stack`` and processes started side by side. Across
  hosts without tokens the header is ignored: the step calls stamp their own audit id
  and are still found through the ``transfer_id`` in their request (docs/operations.md).

An id not honoured is simply not used; the call still runs and gets its own id.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import TYPE_CHECKING

import grpc

from wallet_platform.channels import AUDIT_ID_HEADER
from wallet_platform.server.grants import ORCHESTRATOR

if TYPE_CHECKING:
    from wallet_platform.server.authority import Authority


def _valid_uuid(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def is_local_peer(peer: str) -> bool:
    """True for ``ipv4:127.x.x.x:port``, ``ipv6:[::1]:port`` and ``unix:...`` peers."""
    kind, _, address = peer.partition(":")
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def trusted_audit_id(context: grpc.aio.ServicerContext, authority: Authority | None) -> str | None:
    """The audit id a trusted caller asks this call to stamp on events, if any."""
    metadata = context.invocation_metadata() or ()
    value = next((v for k, v in metadata if k == AUDIT_ID_HEADER), None)
    if value is None:
        return None
    if authority:
        if not authority.may_act_as(context, ORCHESTRATOR):
            return None
    elif not is_local_peer(context.peer() or ""):
        return None
    return _valid_uuid(value.decode() if isinstance(value, bytes) else str(value))
