"""Dead-letter queues: list, show, replay and purge (the library behind ``walletctl dlq``).

Works on whichever bus the settings select: RabbitMQ's ``*.dlq`` queues when
``WALLET_AMQP_URL`` is set, else the in-process bus's dead rows in ``bus_messages``.
Every function opens and closes its own connection, so an operator tool can call it
while the servers run.

Queues may be named by the consumer queue (``analytics.wallet-events``), its DLQ
(``analytics.wallet-events.dlq``) or the consumer's short name (``analytics``).

Replay sends a dead letter back to the one queue it died in (not to every bound queue)
as a first attempt again; the consumers' inbox makes a replay of something already
applied harmless.

On RabbitMQ, listing reads messages with ``basic.get`` without acking them and then
closes the channel, which puts them back in order: nothing is removed by looking.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from wallet_platform.clock import ensure_utc
from wallet_platform.config import Settings
from wallet_platform.messaging.bus import (
    DLQ_TO_QUEUE,
    HEADER_ATTEMPT,
    HEADER_ERROR,
    HEADER_QUEUE,
    HEADER_REPLAYED,
    QUEUES,
    resolve_queue,
)
from wallet_platform.messaging.inprocess import store as bus_store
from wallet_platform.storage.database import Database

DEFAULT_LIMIT = 100
MAX_SCAN = 100_000  # messages one RabbitMQ operation looks at, at most


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message and why it died."""

    queue: str  # the consumer queue it was dead-lettered from
    dlq: str  # the queue it sits in now
    message_id: str
    routing_key: str  # the original routing key
    message_type: str
    body: bytes
    reason: str
    attempts: int
    dead_lettered_at: datetime | None


def _queues(queue: str | None) -> list[str]:
    return list(QUEUES) if queue is None else [resolve_queue(queue)]


# --- public API --------------------------------------------------------------------------


async def list_dead_letters(
    settings: Settings, queue: str | None = None, *, limit: int = DEFAULT_LIMIT
) -> list[DeadLetter]:
    """Dead letters of ``queue`` (or of every queue), oldest first, at most ``limit``."""
    if settings.amqp_url:
        letters: list[DeadLetter] = []
        async with _rabbit_channel(settings) as channel:
            for name in _queues(queue):
                letters.extend(await _rabbit_scan(channel, name, limit=limit))
        return letters[:limit] if queue is None else letters
    return await _db_list(settings, _queues(queue), limit=limit)


async def show_dead_letter(settings: Settings, queue: str, message_id: str) -> DeadLetter | None:
    """The dead letter ``message_id`` in ``queue``'s DLQ, or None."""
    if settings.amqp_url:
        async with _rabbit_channel(settings) as channel:
            for letter in await _rabbit_scan(channel, resolve_queue(queue), limit=MAX_SCAN):
                if letter.message_id == message_id:
                    return letter
        return None
    letters = await _db_list(settings, [resolve_queue(queue)], limit=1, message_ids=[message_id])
    return letters[0] if letters else None


async def replay_dead_letters(
    settings: Settings,
    queue: str,
    message_ids: Sequence[str] | None = None,
    *,
    moved: list[str] | None = None,
) -> int:
    """Send dead letters (all, or those in ``message_ids``) back to their queue.

    Returns how many were replayed. Each one is removed from the DLQ only after the
    broker confirmed the copy (RabbitMQ) / in the same transaction (in-process).
    ``moved``, when given, receives each message id as soon as it has left the DLQ,
    so a caller knows what moved even when a later message fails (the audit record).
    """
    name = resolve_queue(queue)
    wanted = set(message_ids) if message_ids is not None else None
    taken = moved if moved is not None else []
    if settings.amqp_url:
        await _rabbit_take(settings, name, wanted, taken, replay=True)
    else:
        await _db_take(settings, name, wanted, taken, replay=True)
    return len(taken)


async def purge_dead_letters(
    settings: Settings,
    queue: str,
    message_ids: Sequence[str] | None = None,
    *,
    moved: list[str] | None = None,
) -> int:
    """Delete dead letters (all, or those in ``message_ids``); returns how many.

    ``moved`` receives the ids deleted, as for :func:`replay_dead_letters`.
    """
    name = resolve_queue(queue)
    wanted = set(message_ids) if message_ids is not None else None
    taken = moved if moved is not None else []
    if settings.amqp_url:
        await _rabbit_take(settings, name, wanted, taken, replay=False)
    else:
        await _db_take(settings, name, wanted, taken, replay=False)
    return len(taken)


async def count_dead_letters(settings: Settings) -> dict[str, int]:
    """Dead letters per consumer queue (for dashboards and ``walletctl dlq list``)."""
    if settings.amqp_url:
        counts: dict[str, int] = {}
        async with _rabbit_channel(settings) as channel:
            for name, dlq_name in QUEUES.items():
                declared = await channel.declare_queue(dlq_name, passive=True)
                counts[name] = int(declared.declaration_result.message_count or 0)
        return counts
    async with _database(settings) as db, db.read() as conn:
        found = await bus_store.count_dead(conn)
    return {name: found.get(name, 0) for name in QUEUES}


# --- in-process bus (database) ---------------------------------------------------------


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Database]:
    db = Database.from_settings(settings)
    try:
        yield db
    finally:
        await db.dispose()


async def _db_list(
    settings: Settings,
    queues: list[str],
    *,
    limit: int,
    message_ids: Sequence[str] | None = None,
) -> list[DeadLetter]:
    async with _database(settings) as db, db.read() as conn:
        rows = await bus_store.dead_rows(conn, queues, limit=limit, message_ids=message_ids)
    return [
        DeadLetter(
            queue=row.queue,
            dlq=QUEUES[row.queue],
            message_id=row.message_id,
            routing_key=row.routing_key,
            message_type=row.message_type,
            body=row.body,
            reason=row.last_error or "",
            attempts=row.attempt,
            dead_lettered_at=ensure_utc(row.dead_at) if row.dead_at else None,
        )
        for row in rows
    ]


async def _db_take(
    settings: Settings, queue: str, wanted: set[str] | None, taken: list[str], *, replay: bool
) -> None:
    """Make matching dead rows ready again (replay) or delete them, in one transaction;
    their ids go into ``taken`` once it committed."""
    async with _database(settings) as db:
        async with db.transaction() as conn:
            ids = await bus_store.take_dead(conn, queue, wanted, replay=replay)
        taken.extend(ids)


# --- RabbitMQ ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _rabbit_channel(settings: Settings) -> AsyncIterator[AbstractChannel]:
    """A short-lived confirm channel with the topology declared (idempotent)."""
    from wallet_platform.messaging.rabbit import declare_topology

    connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_topology(channel, settings.amqp_queue_type)
        yield channel
    finally:
        await connection.close()


def _header(message: AbstractIncomingMessage, name: str) -> Any:
    return (message.headers or {}).get(name)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _to_dead_letter(message: AbstractIncomingMessage, dlq_name: str) -> DeadLetter:
    from wallet_platform.messaging.rabbit import HEADER_ROUTING_KEY

    queue = _text(_header(message, HEADER_QUEUE)) or DLQ_TO_QUEUE[dlq_name]
    reason = _text(_header(message, HEADER_ERROR))
    routing_key = _text(_header(message, HEADER_ROUTING_KEY))
    deaths = _header(message, "x-death")
    if isinstance(deaths, list) and deaths and not reason:
        # Dead-lettered by the broker itself (rejected, expired...): say so.
        death = deaths[0]
        reason = f"broker dead-lettered: {_text(death.get('reason'))}"
        keys = death.get("routing-keys") or []
        routing_key = routing_key or (_text(keys[0]) if keys else "")
    try:
        attempts = int(_header(message, HEADER_ATTEMPT) or 1)
    except (TypeError, ValueError):
        attempts = 1
    stamp = message.timestamp
    return DeadLetter(
        queue=queue,
        dlq=dlq_name,
        message_id=message.message_id or "",
        routing_key=routing_key or _text(message.routing_key),
        message_type=message.type or "",
        body=message.body,
        reason=reason,
        attempts=attempts,
        dead_lettered_at=ensure_utc(stamp) if isinstance(stamp, datetime) else None,
    )


async def _rabbit_scan(channel: AbstractChannel, queue: str, *, limit: int) -> list[DeadLetter]:
    """Read up to ``limit`` dead letters without removing them (no ack, then requeue)."""
    dlq_name = QUEUES[queue]
    dlq_queue = await channel.declare_queue(dlq_name, passive=True)
    got: list[AbstractIncomingMessage] = []
    letters: list[DeadLetter] = []
    try:
        while len(letters) < limit:
            message = await dlq_queue.get(no_ack=False, fail=False, timeout=10)
            if message is None:
                break
            got.append(message)
            letters.append(_to_dead_letter(message, dlq_name))
    finally:
        for message in got:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
    return letters


async def _rabbit_take(
    settings: Settings, queue: str, wanted: set[str] | None, taken: list[str], *, replay: bool
) -> None:
    """Remove matching dead letters, first republishing them to ``queue`` if ``replay``;
    each id goes into ``taken`` right after its message was acked off the DLQ."""
    dlq_name = QUEUES[queue]
    async with _rabbit_channel(settings) as channel:
        dlq_queue = await channel.declare_queue(dlq_name, passive=True)
        for _ in range(MAX_SCAN):
            message = await dlq_queue.get(no_ack=False, fail=False, timeout=10)
            if message is None:
                break  # skipped ones stay unacked until the channel closes: requeued
            if wanted is not None and message.message_id not in wanted:
                continue
            if replay:
                letter = _to_dead_letter(message, dlq_name)
                await channel.default_exchange.publish(
                    _replay_copy(message, letter),
                    routing_key=letter.queue,
                    mandatory=True,
                    timeout=10,
                )
            await message.ack()
            taken.append(message.message_id or "")


def _replay_copy(message: AbstractIncomingMessage, letter: DeadLetter) -> aio_pika.Message:
    from wallet_platform.messaging.rabbit import HEADER_ROUTING_KEY, amqp_message

    headers = {
        key: value
        for key, value in (message.headers or {}).items()
        if key not in (HEADER_ERROR, HEADER_QUEUE, "x-death", "x-first-death-reason")
        and not key.startswith("x-first-death")
        and not key.startswith("x-last-death")
    }
    headers[HEADER_ATTEMPT] = 1
    headers[HEADER_ROUTING_KEY] = letter.routing_key
    headers[HEADER_REPLAYED] = int(_header(message, HEADER_REPLAYED) or 0) + 1
    return amqp_message(letter.message_id, letter.message_type, letter.body, headers)


__all__ = [
    "DeadLetter",
    "count_dead_letters",
    "list_dead_letters",
    "purge_dead_letters",
    "replay_dead_letters",
    "show_dead_letter",
]
