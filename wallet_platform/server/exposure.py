"""The start-up check: who can reach this server, and what stops them.

A server reachable from the network without authentication lets anyone who can
connect create wallets, move money between them and freeze them. So a server whose
``--listen`` host is not loopback refuses to start unless calls are authenticated
(``WALLET_AUTH_TOKENS``, or mutual TLS: ``WALLET_TLS_CLIENT_CA``) or the operator
accepts the risk with ``WALLET_ALLOW_INSECURE=1`` / ``--allow-insecure``. Loopback
is 127.0.0.0/8, ``::1`` and ``localhost``; anything else (``0.0.0.0``, ``[::]``, a
hostname, an interface address, a unix socket) counts as reachable.

Weak but allowed set-ups are logged as warnings at start-up:

- ``--allow-insecure`` on a non-loopback address;
- bearer tokens over plaintext on a non-loopback address (anyone on the path can
  read a token and replay it);
- mutual TLS with neither tokens nor ``WALLET_TLS_CLIENT_ROLES``: every certificate
  the client CA signed may call every RPC.

The metrics endpoint (``WALLET_METRICS_PORT``) binds the host of ``--listen`` too and
has no authentication; it serves counts and latencies per RPC and status code, saga
states and queue depths, never balances, wallet ids or credentials, so it does not
take part in this check (docs/operations.md, "Trust model").

:func:`enforce` runs once per process start, in ``process.run_server`` (the body of
every serving console script), before migrations, binding or forking workers.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from wallet_platform.server.authority import authority_from_settings, mutual_tls

log = logging.getLogger(__name__)


def listen_host(listen: str) -> str:
    """The host part of ``HOST:PORT`` / ``[V6]:PORT``.

    An unbracketed address with several colons is returned whole: it is no
    loopback address gRPC would bind, so it counts as reachable (fail closed).
    """
    text = listen.strip()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x.x.x) and ``localhost``; nothing else."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True)
class Exposure:
    """What the start-up check found: a reason to refuse, and warnings."""

    refusal: str | None
    warnings: tuple[str, ...]


def assess(settings: Any) -> Exposure:
    """Judge the settings' listen address against their authentication (no side effects
    beyond parsing the credential specs, which stops the process if one is malformed)."""
    listen = settings.listen
    reachable = not is_loopback(listen_host(listen))
    authority = authority_from_settings(settings)
    mtls = mutual_tls(settings)
    warnings: list[str] = []
    if reachable and authority is None and not mtls:
        if not settings.allow_insecure:
            return Exposure(
                f"refusing to serve {listen} without authentication: set WALLET_AUTH_TOKENS "
                "or mutual TLS (WALLET_TLS_CERT, WALLET_TLS_KEY, WALLET_TLS_CLIENT_CA), "
                "listen on 127.0.0.1, or accept the risk with WALLET_ALLOW_INSECURE=1 / "
                "--allow-insecure",
                (),
            )
        warnings.append(
            f"INSECURE: serving {listen} without authentication (--allow-insecure): anyone "
            "who can reach this address may create wallets, move money and freeze wallets"
        )
    if reachable and authority is not None and authority.tokens and not settings.tls_cert:
        warnings.append(
            f"bearer tokens travel in plaintext on {listen}: anyone on the network path can "
            "read and replay them; serve TLS (WALLET_TLS_CERT, WALLET_TLS_KEY)"
        )
    if mtls and authority is None:
        warnings.append(
            "mutual TLS without WALLET_AUTH_TOKENS or WALLET_TLS_CLIENT_ROLES: every "
            "certificate signed by WALLET_TLS_CLIENT_CA may call every RPC; give "
            "certificates roles with WALLET_TLS_CLIENT_ROLES"
        )
    return Exposure(None, tuple(warnings))


def enforce(settings: Any, role: str) -> None:
    """Stop the process (one line, exit status 1) or log the warnings; see the module."""
    exposure = assess(settings)
    if exposure.refusal is not None:
        raise SystemExit(f"{role}: {exposure.refusal}")
    for warning in exposure.warnings:
        log.warning("%s: %s", role, warning, extra={"listen": settings.listen})
