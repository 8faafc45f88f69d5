"""One AMQP connection of the bus, opened so that a dead or stalled peer shows quickly.

A connection that silently stops moving bytes (a broker host gone without a reset, a
proxy or firewall holding the traffic) is otherwise noticed only by the AMQP
heartbeat, which aiormq checks at three times the negotiated interval, or never.

- **Heartbeat** :data:`HEARTBEAT_SECONDS` (unless the URL sets ``heartbeat``): the
  broker drops a silent client after about two intervals, so its unacked deliveries
  go back to their queue, and aiormq closes a connection that received nothing for
  ``3 * (heartbeat + 1)`` seconds.
- **TCP keepalive** and ``TCP_USER_TIMEOUT`` on the socket: the kernel gives up on a
  peer that acknowledges nothing (cable pulled, host gone).
- **Timeouts**: opening a connection (TCP, AMQP handshake and all) is bounded by
  :data:`CONNECT_TIMEOUT_SECONDS`; closing one by :data:`CLOSE_TIMEOUT_SECONDS`. The
  bus bounds every channel operation it waits for and probes the connection itself
  (``RabbitBus``), so a stall is seen within seconds, not at the heartbeat limit.

Connections are plain (not aio-pika's robust ones): the bus replaces a failed
connection with a fresh one and sets everything up again itself, which is simpler to
reason about than restoring channels and consumers of a connection that came back
(aio-pika issues #563, #577, #588: channels not restored after a stuck connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractConnection, ConnectionParameter
from aio_pika.connection import make_url
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory

HEARTBEAT_SECONDS = 5
CONNECT_TIMEOUT_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 2.0
# Kernel-level dead peer detection: probes after 5 s idle, every 2 s, 3 unanswered ->
# closed; data unacknowledged for 10 s -> closed.
KEEPALIVE_IDLE_SECONDS = 5
KEEPALIVE_INTERVAL_SECONDS = 2
KEEPALIVE_PROBES = 3
TCP_USER_TIMEOUT_MS = 10_000


def set_keepalive(sock: socket.socket) -> None:
    """TCP keepalive and user timeout on ``sock`` (the Linux options where available)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS),
    )
    for name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


class _KeepaliveTransport(TransportFactory):
    """aiormq's TCP (or TLS) transport, with :func:`set_keepalive` on its socket."""

    def __init__(self, inner: TransportFactory) -> None:
        self.inner = inner

    async def create(self, url: Any, **kwargs: Any) -> tuple[Any, Any]:
        reader, writer = await self.inner.create(url, **kwargs)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            set_keepalive(sock)
        return reader, writer


class _Connection(aio_pika.Connection):
    """aio-pika's connection, letting a transport factory through to aiormq."""

    PARAMETERS = (
        *aio_pika.Connection.PARAMETERS,
        ConnectionParameter(name="transport_factory", parser=lambda value: value, is_kwarg=True),
    )


def connection_url(url: str) -> str:
    """``url`` with :data:`HEARTBEAT_SECONDS` unless it asks for its own heartbeat."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "heartbeat" for name, _ in query):
        return url
    query.append(("heartbeat", str(HEARTBEAT_SECONDS)))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def open_connection(url: str, name: str) -> AbstractConnection:
    """A new connection (raises if it is not up within the connect timeout)."""
    inner = TLSTransportFactory() if url.startswith("amqps:") else TCPTransportFactory()
    connection = _Connection(
        make_url(connection_url(url)),
        client_properties={"connection_name": name},
        transport_factory=_KeepaliveTransport(inner),
    )
    try:
        await connection.connect(timeout=CONNECT_TIMEOUT_SECONDS)
    except BaseException:
        await close_quietly(connection)
        raise
    return connection


async def close_quietly(connection: AbstractConnection) -> None:
    """Close, giving up after a short while (a stalled peer never answers the close)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT_SECONDS)
