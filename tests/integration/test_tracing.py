"""Tracing end to end, in process, with OpenTelemetry's in-memory span exporter.

- one CreateTransfer carrying a client's ``traceparent`` yields, all in the client's
  trace: the orchestrator's server span, ``saga create``, ``saga run``, both step
  calls and WalletService's server spans for them, the wallet writes, the relay's
  publish of each step's event and both consumers' spans for each (the stack of
  ``wallet-stack`` with the in-process bus);
- tracing off: no span is even started, and nothing is stored (no ``traceparent`` on
  outbox rows or the saga, so no header either);
- a garbled ``traceparent`` is ignored: the call succeeds in a new trace;
- a saga resumed from the database (as the sweeper does) continues the stored trace;
- concurrent deposits sharing a group commit each store their own caller's context;
- RabbitMQ: the relay's message carries the ``traceparent`` header of its publish
  span (a child of the row's context); with tracing off there is no such header.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import insert, select

from saga_orchestrator.domain import TransferState
from saga_orchestrator.engine.runner import SagaRunner
from saga_orchestrator.notifier import TransferNotifier
from saga_orchestrator.repository import TransferRepository
from tests.eventually import eventually
from tests.integration.test_saga_runner import FAST, ScriptedWallets, new_transfer
from tests.integration.walletctl_harness import running_stack
from tests.rabbit import BusUnderTest
from wallet.v1 import events_pb2, transfer_pb2, transfer_pb2_grpc, wallet_pb2, wallet_pb2_grpc
from wallet_platform import topology
from wallet_platform.clock import utcnow
from wallet_platform.messaging.bus import Delivery
from wallet_platform.messaging.outbox.relay import relay_batch
from wallet_platform.messaging.outbox.rows import outbox_row
from wallet_platform.observability import tracing
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import outbox, transfers

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every finished span in the returned exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def trace_of(span: ReadableSpan) -> str:
    return _hex(span.context.trace_id, 32)


def parent_of(span: ReadableSpan) -> str | None:
    return None if span.parent is None else _hex(span.parent.span_id, 16)


def span_id(span: ReadableSpan) -> str:
    return _hex(span.context.span_id, 16)


def named(finished: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def one(finished: list[ReadableSpan], name: str) -> ReadableSpan:
    found = named(finished, name)
    assert len(found) == 1, (name, [s.name for s in finished])
    return found[0]


def attribute(span: ReadableSpan, key: str) -> object:
    """The span's attribute ``key``; the spans looked at here all have attributes."""
    assert span.attributes is not None, span.name
    return span.attributes[key]


async def _open_wallets(channel: grpc.aio.Channel, tag: str) -> tuple[str, str]:
    wallets = wallet_pb2_grpc.WalletServiceStub(channel)
    sender, receiver = f"a-{tag}", f"b-{tag}"
    for wallet_id in (sender, receiver):
        await wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                wallet_id=wallet_id, currency="USD", request_id=wallet_id
            )
        )
    await wallets.Deposit(
        wallet_pb2.DepositRequest(wallet_id=sender, amount=100, request_id=f"dep-{tag}")
    )
    return sender, receiver


async def _transfer(
    channel: grpc.aio.Channel, sender: str, receiver: str, metadata: tuple[tuple[str, str], ...]
) -> transfer_pb2.Transfer:
    stub = transfer_pb2_grpc.TransferServiceStub(channel)
    response = await stub.CreateTransfer(
        transfer_pb2.CreateTransferRequest(
            request_id=uuid.uuid4().hex, from_wallet_id=sender, to_wallet_id=receiver, amount=30
        ),
        metadata=metadata,
    )
    assert response.transfer.state == transfer_pb2.TRANSFER_STATE_COMPLETED
    return response.transfer


async def test_one_transfer_is_one_trace_from_client_to_consumers(
    database_url: str, spans: InMemorySpanExporter
) -> None:
    async with running_stack(database_url) as running:
        async with grpc.aio.insecure_channel(running.target) as channel:
            sender, receiver = await _open_wallets(channel, uuid.uuid4().hex[:8])
            spans.clear()
            transfer = await _transfer(
                channel, sender, receiver, (("traceparent", CLIENT_TRACEPARENT),)
            )

        def consumed() -> list[ReadableSpan]:
            done = [
                s
                for s in spans.get_finished_spans()
                if s.name in ("analytics process", "fraud process") and trace_of(s) == TRACE_ID
            ]
            # Each consumer, for the debit and the credit event (and the milestone).
            return done if len(done) >= 6 else []

        await eventually(consumed, what="both consumers' spans of the transfer's events")

    finished = [s for s in spans.get_finished_spans() if trace_of(s) == TRACE_ID]
    create_call = one(finished, "wallet.v1.TransferService/CreateTransfer")
    assert create_call.kind is SpanKind.SERVER
    assert parent_of(create_call) == CLIENT_SPAN
    assert create_call.parent is not None and create_call.parent.is_remote

    create = one(finished, "saga create")
    assert parent_of(create) == span_id(create_call)
    assert attribute(create, "wallet.transfer.id") == transfer.transfer_id
    run = one(finished, "saga run")
    assert parent_of(run) == span_id(create)  # the context stored with the saga
    assert attribute(run, "wallet.saga.resumed") is False

    for step, rpc in (("debit", "DebitForTransfer"), ("credit", "CreditForTransfer")):
        call = one(finished, f"saga step {step}")
        assert call.kind is SpanKind.CLIENT and parent_of(call) == span_id(run)
        served = one(finished, f"wallet.v1.WalletService/{rpc}")
        assert served.kind is SpanKind.SERVER and parent_of(served) == span_id(call)
        write = one(finished, f"wallet {rpc}")
        assert parent_of(write) == span_id(served)
        publish = one(finished, f"wallet.transfer_{step}ed publish")
        assert publish.kind is SpanKind.PRODUCER and parent_of(publish) == span_id(write)
        message_id = attribute(publish, "messaging.message.id")
        for consumer in ("analytics", "fraud"):
            (handled,) = [
                s
                for s in named(finished, f"{consumer} process")
                if attribute(s, "messaging.message.id") == message_id
            ]
            assert handled.kind is SpanKind.CONSUMER
            assert parent_of(handled) == span_id(publish)

    # The milestone the saga queues is published in the same trace.
    completed = one(finished, "wallet.transfer_completed publish")
    assert trace_of(completed) == TRACE_ID
    # Nothing of the transfer escaped into another trace.
    stray = [
        s.name
        for s in spans.get_finished_spans()
        if s.name.startswith(("saga ", "wallet.transfer_")) and trace_of(s) != TRACE_ID
    ]
    assert stray == []


async def test_tracing_off_makes_no_spans_and_stores_no_context(
    database_url: str, monkeypatch
) -> None:
    """Off: not one span is started (every start goes through tracing's tracer, and the
    SDK's own start_span is made to fail here), nothing is stored, so nothing is sent."""
    assert not tracing.enabled()

    def no_span(*_args, **_kwargs):
        raise AssertionError("a span was started with tracing off")

    monkeypatch.setattr(SdkTracer, "start_span", no_span)
    monkeypatch.setattr(SdkTracer, "start_as_current_span", no_span)
    async with running_stack(database_url) as running:
        async with grpc.aio.insecure_channel(running.target) as channel:
            sender, receiver = await _open_wallets(channel, uuid.uuid4().hex[:8])
            transfer = await _transfer(
                channel, sender, receiver, (("traceparent", CLIENT_TRACEPARENT),)
            )
        db = running.runtime.db
        async with db.read() as conn:
            stored = (
                await conn.execute(
                    select(transfers.c.traceparent).where(
                        transfers.c.transfer_id == transfer.transfer_id
                    )
                )
            ).scalar_one()
            contexts = (await conn.execute(select(outbox.c.traceparent))).scalars().all()
    assert stored is None
    assert len(contexts) >= 6  # 2 wallets, the deposit, 2 steps, the milestone
    assert set(contexts) == {None}


@pytest.mark.parametrize(
    "garbled",
    [
        "not-a-traceparent",
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # the all-zero trace id is invalid
        f"00-{TRACE_ID}-{'0' * 16}-01",  # so is the all-zero span id
        f"zz-{TRACE_ID}-{CLIENT_SPAN}-01",
        "00-" + "g" * 32 + "-" + CLIENT_SPAN + "-01",
    ],
)
async def test_a_garbled_traceparent_starts_a_new_trace(
    tmp_path, spans: InMemorySpanExporter, garbled: str
) -> None:
    async with (
        running_stack(f"sqlite:///{tmp_path / 'garbled.db'}") as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        wallets = wallet_pb2_grpc.WalletServiceStub(channel)
        await wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(wallet_id="w", currency="USD", request_id="r"),
            metadata=(("traceparent", garbled),),
        )
    served = one(list(spans.get_finished_spans()), "wallet.v1.WalletService/CreateWallet")
    assert served.parent is None  # a root: a new trace
    assert served.context.trace_id != 0 and trace_of(served) != TRACE_ID


async def test_a_resumed_saga_continues_the_stored_trace(
    database: Database, spans: InMemorySpanExporter
) -> None:
    wallets = ScriptedWallets()
    repository = TransferRepository(database)
    runner = SagaRunner(repository, wallets, TransferNotifier(), FAST, owner="r2")
    transfer = new_transfer(None)  # as after a crash: nobody holds it
    transfer = dataclasses.replace(transfer, traceparent=CLIENT_TRACEPARENT)
    await repository.insert(transfer)
    stored_transfer = await repository.get(transfer.transfer_id)
    assert stored_transfer is not None and stored_transfer.traceparent == CLIENT_TRACEPARENT

    # What the sweeper does: lease the due saga, then drive it from the database.
    claimed = await repository.claim_due("r2", utcnow(), runner.lease_until(), 10)
    assert claimed == [transfer.transfer_id]
    done = await runner.drive(transfer.transfer_id)
    assert done is not None and done.state is TransferState.COMPLETED

    finished = list(spans.get_finished_spans())
    run = one(finished, "saga run")
    assert trace_of(run) == TRACE_ID and parent_of(run) == CLIENT_SPAN
    assert attribute(run, "wallet.saga.resumed") is True
    # The milestone row carries the resumed saga's context (so its consumers join in).
    async with database.read() as conn:
        stored = (
            await conn.execute(
                select(outbox.c.traceparent).where(
                    outbox.c.message_id == f"{transfer.transfer_id}:completed"
                )
            )
        ).scalar_one()
    assert stored is not None and stored.split("-")[1] == TRACE_ID


async def _relay_one(but: BusUnderTest, traceparent: str | None) -> Delivery:
    """Queue one outbox row, relay it, and return what the analytics queue received."""
    message_id = str(uuid.uuid4())
    row = outbox_row(
        message_id,
        "wallet.transfer_completed",
        events_pb2.TransferCompleted(),
        utcnow(),
        traceparent,
    )
    async with but.db.transaction() as conn:
        await conn.execute(insert(outbox).values(**row))
    received: asyncio.Queue[Delivery] = asyncio.Queue()

    async def handler(delivery: Delivery) -> None:
        if delivery.message_id == message_id:
            received.put_nowait(delivery)

    queue = next(iter(topology.QUEUES))
    await but.bus.consume(queue, handler)
    try:
        assert await relay_batch(but.db, but.bus) == 1
        return await asyncio.wait_for(received.get(), 30)
    finally:
        await but.bus.stop_consuming(queue)


async def test_rabbitmq_header_is_the_publish_spans_context(
    rabbit_bus_under_test: BusUnderTest, spans: InMemorySpanExporter
) -> None:
    delivery = await _relay_one(rabbit_bus_under_test, CLIENT_TRACEPARENT)
    publish = one(list(spans.get_finished_spans()), "wallet.transfer_completed publish")
    assert parent_of(publish) == CLIENT_SPAN and trace_of(publish) == TRACE_ID
    assert delivery.traceparent == f"00-{TRACE_ID}-{span_id(publish)}-01"


async def test_rabbitmq_no_header_when_tracing_is_off(
    rabbit_bus_under_test: BusUnderTest,
) -> None:
    assert not tracing.enabled()
    delivery = await _relay_one(rabbit_bus_under_test, None)
    assert delivery.traceparent is None


async def test_concurrent_writes_keep_their_own_context(
    database_url: str, spans: InMemorySpanExporter
) -> None:
    """Deposits that share a group commit (PostgreSQL) still queue their outbox rows
    each with its caller's trace, not the batch's."""
    async with running_stack(database_url) as running:
        async with grpc.aio.insecure_channel(running.target) as channel:
            wallets = wallet_pb2_grpc.WalletServiceStub(channel)
            ids = [f"w{n}-{uuid.uuid4().hex[:6]}" for n in range(12)]
            for wallet_id in ids:
                await wallets.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        wallet_id=wallet_id, currency="USD", request_id=wallet_id
                    )
                )
            traces = {wallet_id: uuid.uuid4().hex for wallet_id in ids}
            responses = await asyncio.gather(
                *(
                    wallets.Deposit(
                        wallet_pb2.DepositRequest(
                            wallet_id=wallet_id, amount=5, request_id=f"d-{wallet_id}"
                        ),
                        metadata=(("traceparent", f"00-{traces[wallet_id]}-{CLIENT_SPAN}-01"),),
                    )
                    for wallet_id in ids
                )
            )
        async with running.runtime.db.read() as conn:
            rows = dict(
                (await conn.execute(select(outbox.c.message_id, outbox.c.traceparent))).all()
            )
    for wallet_id, response in zip(ids, responses, strict=True):
        stored = rows[response.event.event_id]
        assert stored is not None and stored.split("-")[1] == traces[wallet_id], wallet_id
