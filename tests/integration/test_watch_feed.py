"""The shared change feed behind WatchTransfers, on every database backend.

The feed runs against a real ``TransferRepository``; changes made "by this replica" are
published through the real in-process notifier, as the saga runner does. One test
drives a real orchestrator and a gRPC client that does not keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import grpc
import pytest

from saga_orchestrator.bootstrap import SagaComponent
from saga_orchestrator.domain import Transfer, TransferState
from saga_orchestrator.notifier import TransferNotifier
from saga_orchestrator.repository import TransferRepository
from saga_orchestrator.watch_feed import (
    FeedStoppedError,
    Subscription,
    TransferFeed,
    WatchFilter,
    WatchTooSlowError,
)
from tests.eventually import eventually
from tests.integration.test_saga_transfers import saga_settings, start_orchestrator
from wallet.v1 import transfer_pb2, transfer_pb2_grpc
from wallet_platform.clock import utcnow
from wallet_platform.server.status import error_reason
from wallet_platform.storage.database import Database


class CountingRepository(TransferRepository):
    """The real repository, counting the feed's polls."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.polls = 0

    async def changed_since(self, since: datetime, limit: int = 500) -> list[Transfer]:
        self.polls += 1
        return await super().changed_since(since, limit)


def change(source: str = "w-a", target: str = "w-b", transfer_id: str = "") -> Transfer:
    return Transfer.pending(
        transfer_id=transfer_id or str(uuid.uuid4()),
        request_id=uuid.uuid4().hex,
        from_wallet_id=source,
        to_wallet_id=target,
        amount=1,
        currency="USD",
        lease_owner=None,
        lease_expires_at=None,
        now=utcnow(),
    )


def moved(transfer: Transfer, state: TransferState) -> Transfer:
    return dataclasses.replace(transfer, state=state, updated_at=utcnow())


class Reader:
    """Reads a subscription into ``seen`` until it ends; ``error`` is how it ended."""

    def __init__(self, subscription: Subscription) -> None:
        self.seen: list[Transfer] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._read(subscription))

    async def _read(self, subscription: Subscription) -> None:
        try:
            async for transfer in subscription:
                self.seen.append(transfer)
        except Exception as error:
            self.error = error


@pytest.fixture
async def repository(database: Database) -> CountingRepository:
    return CountingRepository(database)


@pytest.fixture
async def feed(repository: CountingRepository) -> AsyncIterator[TransferFeed]:
    feed = TransferFeed(repository, TransferNotifier(), poll_seconds=0.1, subscriber_queue=50)
    yield feed
    await feed.stop()


@contextlib.asynccontextmanager
async def subscribed(feed: TransferFeed, count: int) -> AsyncIterator[list[Subscription]]:
    """``count`` subscriptions to everything, held together."""
    async with contextlib.AsyncExitStack() as exits:
        yield [await exits.enter_async_context(feed.subscribe(WatchFilter())) for _ in range(count)]


async def test_one_poll_loop_serves_every_subscriber_and_stops_with_the_last(
    feed: TransferFeed, repository: CountingRepository
) -> None:
    assert not feed.polling
    async with subscribed(feed, 100) as subscriptions:
        assert feed.subscribers == 100 and feed.polling
        before = repository.polls
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(1.0)  # a window to count polls in (not a wait for a result)
        window = loop.time() - started
        polls = repository.polls - before
        # One loop: about one poll per 0.1 s, not one per subscriber (100 per 0.1 s).
        assert 1 <= polls <= window / feed.poll_seconds + 2
        feed.notifier.publish(change())
        readers = [Reader(s) for s in subscriptions]
        await eventually(
            lambda: [len(r.seen) for r in readers],
            lambda seen: set(seen) == {1},
            what="one change per reader",
        )
    assert feed.subscribers == 0 and not feed.polling
    stopped_at = repository.polls
    await asyncio.sleep(0.3)  # no subscriber: no poll
    assert repository.polls == stopped_at
    async with feed.subscribe(WatchFilter()):
        assert feed.polling  # the next subscriber starts it again


async def test_a_slow_subscriber_is_ended_and_never_holds_more_than_its_queue(
    feed: TransferFeed,
) -> None:
    """A subscriber that never reads: its queue stops at 50, then it is ended
    (WATCH_TOO_SLOW) and its memory released; a reading subscriber gets everything."""
    async with (
        feed.subscribe(WatchFilter()) as fast,
        feed.subscribe(WatchFilter()) as slow,
    ):
        reader = Reader(fast)
        published: list[Transfer] = []
        for _ in range(10):  # bursts of 40 the fast reader drains between
            burst = [change() for _ in range(40)]
            for transfer in burst:
                feed.notifier.publish(transfer)
            published.extend(burst)
            await eventually(
                lambda: len(reader.seen),
                lambda n: n == len(published),
                what="every published change seen",
            )
            assert slow.queued <= slow.capacity == 50
        assert [t.transfer_id for t in reader.seen] == [t.transfer_id for t in published]
        assert slow.queued == 0  # dropped when it was ended
        with pytest.raises(WatchTooSlowError):
            await anext(slow)
        assert feed.subscribers == 1  # the slow one is out of the fan-out already
        assert reader.error is None
        reader.task.cancel()


async def test_each_subscriber_gets_what_it_wants_once_and_never_backwards(
    feed: TransferFeed,
) -> None:
    one = change("w-x", "w-y")
    other = change("w-z", "w-x")
    unrelated = change("w-p", "w-q")
    async with (
        feed.subscribe(WatchFilter()) as everything,
        feed.subscribe(WatchFilter(wallet_id="w-y")) as wallet_y,
        feed.subscribe(WatchFilter(wallet_id="w-x")) as wallet_x,
        feed.subscribe(WatchFilter(transfer_id=other.transfer_id)) as just_other,
        feed.subscribe(WatchFilter(transfer_id=one.transfer_id, wallet_id="w-q")) as nothing,
    ):
        readers = {
            name: Reader(s)
            for name, s in {
                "all": everything,
                "y": wallet_y,
                "x": wallet_x,
                "other": just_other,
                "none": nothing,
            }.items()
        }
        for transfer in (one, other, unrelated):
            feed.notifier.publish(transfer)
        debited = moved(one, TransferState.DEBITED)
        feed.notifier.publish(debited)
        feed.notifier.publish(one)  # stale (PENDING after DEBITED): never sent
        feed.notifier.publish(debited)  # a duplicate: never sent
        feed.notifier.publish(moved(one, TransferState.COMPLETED))
        await eventually(lambda: len(readers["all"].seen), lambda n: n == 5, what="5 changes seen")

        def states(name: str) -> list[tuple[str, str]]:
            return [(t.transfer_id, t.state.value) for t in readers[name].seen]

        a, b, c = one.transfer_id, other.transfer_id, unrelated.transfer_id
        assert states("all") == [
            (a, "PENDING"),
            (b, "PENDING"),
            (c, "PENDING"),
            (a, "DEBITED"),
            (a, "COMPLETED"),
        ]
        assert states("y") == [(a, "PENDING"), (a, "DEBITED"), (a, "COMPLETED")]
        assert states("x") == [(a, "PENDING"), (b, "PENDING"), (a, "DEBITED"), (a, "COMPLETED")]
        assert states("other") == [(b, "PENDING")]
        assert states("none") == []
        for reader in readers.values():
            reader.task.cancel()


async def test_stop_ends_subscribers_and_refuses_new_ones(feed: TransferFeed) -> None:
    async with feed.subscribe(WatchFilter()) as subscription:
        reader = Reader(subscription)
        await feed.stop()
        await asyncio.wait_for(reader.task, 5)
        assert isinstance(reader.error, FeedStoppedError)
    with pytest.raises(FeedStoppedError):
        async with feed.subscribe(WatchFilter()):
            pass


async def test_a_client_that_does_not_keep_up_gets_resource_exhausted(database_url: str) -> None:
    """Through a real server: a stream whose queue overflows ends with RESOURCE_EXHAUSTED
    (WATCH_TOO_SLOW); a stream watching another wallet is untouched and still served."""
    saga = await start_orchestrator(saga_settings(database_url, "127.0.0.1:1"))
    component = next(c for c in saga.components if isinstance(c, SagaComponent))
    component.feed.subscriber_queue = 20
    try:
        async with grpc.aio.insecure_channel(saga.target) as channel:
            stub = transfer_pb2_grpc.TransferServiceStub(channel)
            flooded = stub.WatchTransfers(transfer_pb2.WatchTransfersRequest(wallet_id="w-busy"))
            calm = stub.WatchTransfers(transfer_pb2.WatchTransfersRequest(wallet_id="w-calm"))
            await flooded.initial_metadata()
            await calm.initial_metadata()
            for _ in range(25):  # in one go: more than the stream's queue holds
                component.feed.notifier.publish(change("w-busy", "w-other"))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for _ in flooded:
                    pass
            assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_reason(ended.value) == "WATCH_TOO_SLOW"
            assert "resubscribe" in (ended.value.details() or "")
            calm_change = change("w-calm", "w-other")
            component.feed.notifier.publish(calm_change)
            first = await asyncio.wait_for(calm.read(), 10)
            assert first.transfer.transfer_id == calm_change.transfer_id
            calm.cancel()
    finally:
        await saga.stop(grace=1)
