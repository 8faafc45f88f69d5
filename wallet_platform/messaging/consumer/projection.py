"""What a consumer implements for the runner: a projection of the event stream.

The runner owns delivery, batching, the inbox, retries and the crash point; a
projection only says

- :meth:`Projection.translate`: what one delivery means to it, as its own domain
  object (``None``: nothing but the inbox row), validated at delivery so a message
  that can never be applied is a :class:`PoisonMessageError` at once;
- :meth:`Projection.unit_of_work`: a new transaction on its store (its persistence
  adapter), which can also write inbox rows;
- :meth:`Projection.record_and_apply`: inside that unit of work, the batch's inbox
  rows and the change of its NEW events, in arrival order. Most projections write
  the rows first and apply what was new (:func:`record_then_apply`); one whose
  change is a single statement may do both at once.

Projections keep all their state in the database: a rolled back batch may translate
and apply the same event again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Self, TypeVar

from wallet_platform.messaging.bus import Delivery
from wallet_platform.messaging.consumer.inbox import Recorded

W = TypeVar("W")


@dataclass(frozen=True, slots=True)
class Translated(Generic[W]):
    """A delivery as the projection understands it."""

    work: W | None  # None: the event changes nothing but its inbox row
    # Log context while it is applied on its own, e.g. the audit and transfer ids.
    trace: Mapping[str, str | None] = field(default_factory=dict)


class InboxUnitOfWork(Protocol):
    """A projection's unit of work (a :class:`~wallet_platform.storage.unit_of_work.
    UnitOfWork`): its own statements plus the inbox (``CoreInboxUnitOfWork`` or
    ``PipelineInboxUnitOfWork`` give it)."""

    deadline: float | None  # seconds; the runner sets it (see UnitOfWork)

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: Any) -> None: ...

    async def commit(self) -> None: ...

    async def record_inbox(self, consumer: str, message_ids: Sequence[str]) -> Recorded: ...


U = TypeVar("U", bound=InboxUnitOfWork)


class Projection(Protocol[W, U]):
    consumer_name: str  # the inbox key, e.g. "analytics"
    queue: str  # the queue it consumes

    def translate(self, delivery: Delivery) -> Translated[W]:
        """Decode and validate (raise PoisonMessageError if it can never succeed)."""
        ...

    def unit_of_work(self) -> U:
        """A new, not yet started, unit of work on the projection's store."""
        ...

    async def record_and_apply(
        self, uow: U, consumer: str, message_ids: Sequence[str], work: Sequence[W | None]
    ) -> Recorded:
        """Inbox rows for the distinct ``message_ids`` and the change of the new
        events among them (``work[i]`` belongs to ``message_ids[i]``)."""
        ...


async def record_then_apply(
    uow: U,
    consumer: str,
    message_ids: Sequence[str],
    work: Sequence[W | None],
    apply: Callable[[U, list[W]], Awaitable[Any]],
) -> Recorded:
    """The usual :meth:`Projection.record_and_apply`: write the inbox rows, then
    ``apply`` the work of the new events in arrival order. A batch without work
    (e.g. deposits, for the fraud rules) never waits for the inbox's answer before
    its commit."""
    recorded = await uow.record_inbox(consumer, message_ids)
    if any(item is not None for item in work):
        new = await recorded.new_ids()
        todo = [
            item
            for message_id, item in zip(message_ids, work, strict=True)
            if item is not None and message_id in new
        ]
        if todo:
            await apply(uow, todo)
    return recorded
