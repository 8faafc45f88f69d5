"""WalletService use cases against a real database, on SQLite and on PostgreSQL.

Each test gets a fresh migrated database (``database`` fixture) and runs once per
backend, so the portable path and the PostgreSQL fast path pass the same cases.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from wallet.v1 import events_pb2
from wallet_platform.errors import (
    BalanceOverflowError,
    CurrencyMismatchError,
    HoldNotFoundError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    InvalidArgumentError,
    NotFoundError,
    ReplayedError,
    WalletAlreadyExistsError,
    WalletFrozenError,
    WalletNotFoundError,
)
from wallet_platform.storage.schema import idempotency_records, outbox, wallet_events, wallets
from wallet_service import domain
from wallet_service.domain import INT64_MAX, Movement
from wallet_service.messages import response_to_pb
from wallet_service.service import WalletService


@pytest.fixture
def service(database):
    return WalletService(database)


def rid() -> str:
    return uuid.uuid4().hex


async def new_wallet(service: WalletService, balance: int = 0, currency: str = "USD") -> str:
    wallet_id = f"w-{uuid.uuid4().hex[:12]}"
    await service.create_wallet(wallet_id, currency, rid())
    if balance:
        await service.deposit(wallet_id, balance, rid())
    return wallet_id


async def check_invariants(database, wallet_id: str) -> None:
    """Balance = signed sum of events; sequences 1..n; version = n; one outbox row each."""
    async with database.read() as conn:
        row = (await conn.execute(select(wallets).where(wallets.c.wallet_id == wallet_id))).one()
        events = (
            await conn.execute(
                select(wallet_events)
                .where(wallet_events.c.wallet_id == wallet_id)
                .order_by(wallet_events.c.sequence)
            )
        ).all()
        queued = set(
            (
                await conn.execute(
                    select(outbox.c.message_id).where(
                        outbox.c.message_id.in_([e.event_id for e in events])
                    )
                )
            ).scalars()
        )
    signs = {m.event_type: m.sign for m in Movement}
    running = 0
    for position, event in enumerate(events, start=1):
        assert event.sequence == position
        running += signs.get(event.type, 0) * event.amount
        assert event.balance_after == running
    assert row.balance == running
    assert row.version == len(events)
    assert queued == {e.event_id for e in events}


async def test_create_wallet_opens_an_empty_active_wallet_with_its_first_event(service, database):
    response = await service.create_wallet("alice", "USD", "r-create")
    wallet = response.wallet
    assert (wallet.wallet_id, wallet.currency, wallet.balance, wallet.version) == (
        "alice",
        "USD",
        0,
        1,
    )
    assert wallet.status == domain.ACTIVE
    events, token = await service.list_events("alice")
    assert [(e.sequence, e.type, e.amount) for e in events] == [(1, domain.WALLET_CREATED, 0)]
    assert token == ""
    await check_invariants(database, "alice")


async def test_create_wallet_without_id_makes_a_uuid_and_replays_it(service):
    first = await service.create_wallet("", "EUR", "r-anon")
    assert uuid.UUID(first.wallet.wallet_id)
    again = await service.create_wallet("", "EUR", "r-anon")
    assert again.replayed and again.wallet.wallet_id == first.wallet.wallet_id


async def test_a_taken_wallet_id_is_already_exists_and_stays_so_on_replay(service):
    await service.create_wallet("bob", "USD", rid())
    with pytest.raises(WalletAlreadyExistsError):
        await service.create_wallet("bob", "EUR", "r-dup")
    with pytest.raises(ReplayedError) as replayed:
        await service.create_wallet("bob", "EUR", "r-dup")
    assert replayed.value.code_name == "ALREADY_EXISTS"
    assert replayed.value.error_reason == "WALLET_ALREADY_EXISTS"


async def test_deposit_and_withdraw_move_money_and_log_it(service, database):
    wallet_id = await new_wallet(service)
    deposited = await service.deposit(wallet_id, 1_000, "r-dep")
    assert deposited.wallet.balance == 1_000 and not deposited.replayed
    assert deposited.event.type == domain.FUNDS_DEPOSITED
    assert (deposited.event.sequence, deposited.event.balance_after) == (2, 1_000)
    assert deposited.event.request_id == "r-dep"
    withdrawn = await service.withdraw(wallet_id, 300, "r-wd")
    assert withdrawn.wallet.balance == 700 and withdrawn.wallet.version == 3
    assert withdrawn.event.type == domain.FUNDS_WITHDRAWN
    assert (await service.get_wallet(wallet_id)).balance == 700
    await check_invariants(database, wallet_id)


async def test_a_replay_returns_the_original_response_and_changes_nothing(service, database):
    wallet_id = await new_wallet(service)
    first = await service.deposit(wallet_id, 50, "r-once")
    await service.deposit(wallet_id, 7, rid())  # the wallet moves on meanwhile
    again = await service.deposit(wallet_id, 50, "r-once")
    assert again.replayed
    assert again.event == first.event and again.wallet == first.wallet
    assert (await service.get_wallet(wallet_id)).balance == 57
    await check_invariants(database, wallet_id)


@pytest.mark.parametrize(
    "other_call",
    [
        lambda s, w: s.deposit(w, 51, "r-key"),  # other amount
        lambda s, w: s.withdraw(w, 50, "r-key"),  # other method
        lambda s, w: s.set_frozen(w, "r-key", freeze=True),
        lambda s, w: s.create_wallet("", "USD", "r-key"),
    ],
)
async def test_a_request_id_reused_with_other_parameters_is_rejected(service, other_call):
    wallet_id = await new_wallet(service)
    await service.deposit(wallet_id, 50, "r-key")
    with pytest.raises(IdempotencyKeyReusedError) as raised:
        await other_call(service, wallet_id)
    assert raised.value.code_name == "ALREADY_EXISTS"
    assert (await service.get_wallet(wallet_id)).balance == 50


async def test_a_replay_answers_with_the_stored_bytes(service, database):
    """The stored outcome is the RPC's response message: the first answer's bytes are
    what is stored, a replay's domain result decodes them faithfully, and the gRPC
    edge answers a replay with exactly those bytes (``replayed`` aside)."""
    wallet_id = await new_wallet(service, balance=500)
    other = await new_wallet(service)
    usd = {"currency": "USD", "transfer_id": "T"}
    debit, credit = Movement.TRANSFER_DEBIT, Movement.TRANSFER_CREDIT
    writes = [  # (method, key, the write)
        ("CreateWallet", "k-create", lambda: service.create_wallet("", "EUR", "k-create")),
        ("Deposit", "k-dep", lambda: service.deposit(wallet_id, 5, "k-dep")),
        ("Withdraw", "k-wd", lambda: service.withdraw(wallet_id, 3, "k-wd")),
        (
            "DebitForTransfer",
            "T:debit",
            lambda: service.move(debit, wallet_id, 40, "", to_wallet_id=other, **usd),
        ),
        ("CreditForTransfer", "T:credit", lambda: service.move(credit, other, 40, "", **usd)),
        ("FreezeWallet", "k-fr", lambda: service.set_frozen(wallet_id, "k-fr", freeze=True)),
        ("FreezeWallet", "k-fr2", lambda: service.set_frozen(wallet_id, "k-fr2", freeze=True)),
        ("UnfreezeWallet", "k-un", lambda: service.set_frozen(wallet_id, "k-un", freeze=False)),
    ]
    for method, key, write in writes:
        first = await write()
        again = await write()
        assert again.replayed and not first.replayed
        # The domain view of the stored answer is the original result.
        assert again.wallet == first.wallet
        if method not in ("CreateWallet", "FreezeWallet", "UnfreezeWallet"):
            assert again.event == first.event
        async with database.read() as conn:
            stored = (
                await conn.execute(
                    select(idempotency_records.c.response).where(
                        idempotency_records.c.request_id == key
                    )
                )
            ).scalar_one()
        assert response_to_pb(method, first).SerializeToString() == stored
        assert response_to_pb(method, replace(again, replayed=False)).SerializeToString() == stored
        assert response_to_pb(method, again).replayed  # type: ignore[attr-defined]


async def test_insufficient_funds_is_stored_and_replayed_even_after_a_deposit(service, database):
    wallet_id = await new_wallet(service, 100)
    with pytest.raises(InsufficientFundsError) as first:
        await service.withdraw(wallet_id, 150, "r-short")
    await service.deposit(wallet_id, 500, rid())
    with pytest.raises(ReplayedError) as replayed:
        await service.withdraw(wallet_id, 150, "r-short")
    assert replayed.value.code_name == "FAILED_PRECONDITION"
    assert replayed.value.error_reason == "INSUFFICIENT_FUNDS"
    assert replayed.value.message == first.value.message
    assert (await service.get_wallet(wallet_id)).balance == 600
    await check_invariants(database, wallet_id)


async def test_an_unknown_wallet_is_not_found_and_that_outcome_is_stored(service):
    with pytest.raises(WalletNotFoundError):
        await service.deposit("ghost", 5, "r-ghost")
    await service.create_wallet("ghost", "USD", rid())
    # The key already has an outcome: the same NOT_FOUND, not a silent second try.
    with pytest.raises(ReplayedError) as replayed:
        await service.deposit("ghost", 5, "r-ghost")
    assert replayed.value.code_name == "NOT_FOUND"
    with pytest.raises(WalletNotFoundError):
        await service.get_wallet("nobody")
    with pytest.raises(WalletNotFoundError):
        await service.list_events("nobody")
    with pytest.raises(WalletNotFoundError):
        await service.set_frozen("nobody", rid(), freeze=True)


async def test_freeze_blocks_debits_and_credits_and_unfreeze_restores(service, database):
    wallet_id = await new_wallet(service, 100)
    other = await new_wallet(service, 100)
    # Money in flight both ways before the freeze: t0 from the wallet, t1 to it.
    await service.move(
        Movement.TRANSFER_DEBIT,
        wallet_id,
        30,
        "",
        transfer_id="t0",
        currency="USD",
        to_wallet_id=other,
    )
    await service.move(
        Movement.TRANSFER_DEBIT,
        other,
        1,
        "",
        transfer_id="t1",
        currency="USD",
        to_wallet_id=wallet_id,
    )
    frozen = await service.set_frozen(wallet_id, "r-freeze", freeze=True)
    assert frozen.wallet.status == domain.FROZEN
    again = await service.set_frozen(wallet_id, rid(), freeze=True)  # already frozen
    assert again.wallet.version == frozen.wallet.version  # no new event
    assert (await service.set_frozen(wallet_id, "r-freeze", freeze=True)).replayed
    for call in (
        service.deposit(wallet_id, 1, rid()),
        service.withdraw(wallet_id, 1, rid()),
        service.move(
            Movement.TRANSFER_DEBIT,
            wallet_id,
            1,
            "",
            transfer_id="t2",
            currency="USD",
            to_wallet_id=other,
        ),
        service.move(Movement.TRANSFER_CREDIT, wallet_id, 1, "", transfer_id="t1", currency="USD"),
    ):
        with pytest.raises(WalletFrozenError):
            await call
    refunded = await service.move(
        Movement.TRANSFER_REFUND, wallet_id, 30, "", transfer_id="t0", currency="USD"
    )
    assert refunded.wallet.balance == 100
    assert refunded.wallet.status == domain.FROZEN
    active = await service.set_frozen(wallet_id, rid(), freeze=False)
    assert active.wallet.status == domain.ACTIVE
    assert (await service.withdraw(wallet_id, 100, rid())).wallet.balance == 0
    events, _ = await service.list_events(wallet_id)
    assert [e.type for e in events[:4]] == [
        domain.FUNDS_WITHDRAWN,
        domain.WALLET_UNFROZEN,
        domain.TRANSFER_REFUNDED,
        domain.WALLET_FROZEN,
    ]
    await check_invariants(database, wallet_id)


async def test_transfer_steps_carry_the_transfer_and_check_currency(service, database):
    sender = await new_wallet(service, 1_000)
    receiver = await new_wallet(service, 0, currency="EUR")
    debit = await service.move(
        Movement.TRANSFER_DEBIT,
        sender,
        400,
        "t9:debit",
        transfer_id="t9",
        currency="USD",
        to_wallet_id=receiver,
    )
    assert debit.event.type == domain.TRANSFER_DEBITED
    assert debit.event.transfer_id == "t9" and debit.wallet.balance == 600
    assert debit.event.request_id == "t9:debit"
    with pytest.raises(CurrencyMismatchError):
        await service.move(
            Movement.TRANSFER_CREDIT, receiver, 400, "t9:credit", transfer_id="t9", currency="USD"
        )
    refund = await service.move(
        Movement.TRANSFER_REFUND, sender, 400, "t9:refund", transfer_id="t9", currency="USD"
    )
    assert refund.event.type == domain.TRANSFER_REFUNDED
    assert refund.wallet.balance == 1_000
    # The orchestrator retries the same step after a crash: replayed, applied once.
    assert (
        await service.move(
            Movement.TRANSFER_DEBIT,
            sender,
            400,
            "t9:debit",
            transfer_id="t9",
            currency="USD",
            to_wallet_id=receiver,
        )
    ).replayed
    with pytest.raises(InsufficientFundsError):
        await service.move(
            Movement.TRANSFER_DEBIT,
            sender,
            5_000,
            "",
            transfer_id="t10",
            currency="USD",
            to_wallet_id=receiver,
        )
    with pytest.raises(HoldNotFoundError):
        await service.move(
            Movement.TRANSFER_CREDIT, receiver, 5, "", transfer_id="t11", currency="EUR"
        )
    await check_invariants(database, sender)
    await check_invariants(database, receiver)


async def test_balance_overflow_is_out_of_range_and_changes_nothing(service, database):
    wallet_id = await new_wallet(service, INT64_MAX - 10)
    assert (await service.deposit(wallet_id, 10, rid())).wallet.balance == INT64_MAX
    with pytest.raises(BalanceOverflowError) as raised:
        await service.deposit(wallet_id, 1, rid())
    assert raised.value.code_name == "OUT_OF_RANGE"
    source = await new_wallet(service, 11)
    await service.move(
        Movement.TRANSFER_DEBIT,
        source,
        11,
        "",
        transfer_id="t",
        currency="USD",
        to_wallet_id=wallet_id,
    )
    with pytest.raises(BalanceOverflowError):
        await service.move(
            Movement.TRANSFER_CREDIT, wallet_id, 11, "", transfer_id="t", currency="USD"
        )
    assert (await service.get_wallet(wallet_id)).balance == INT64_MAX
    await check_invariants(database, wallet_id)


async def test_every_event_gets_one_outbox_row_with_the_published_message(service, database):
    wallet_id = await new_wallet(service, 20)
    await service.withdraw(wallet_id, 5, rid())
    await service.set_frozen(wallet_id, rid(), freeze=True)
    async with database.read() as conn:
        rows = (
            await conn.execute(
                select(outbox).where(outbox.c.status == "pending").order_by(outbox.c.id)
            )
        ).all()
    assert [r.routing_key for r in rows] == [
        "wallet.wallet_created",
        "wallet.funds_deposited",
        "wallet.funds_withdrawn",
        "wallet.wallet_frozen",
    ]
    withdrawn = events_pb2.FundsWithdrawn.FromString(rows[2].payload)
    assert rows[2].message_type == "wallet.v1.FundsWithdrawn"
    assert withdrawn.event.event_id == rows[2].message_id
    assert (withdrawn.event.amount, withdrawn.event.balance_after) == (5, 15)
    await check_invariants(database, wallet_id)


async def test_rejections_write_no_event_and_no_outbox_row(service, database):
    wallet_id = await new_wallet(service, 10)
    with pytest.raises(InsufficientFundsError):
        await service.withdraw(wallet_id, 11, rid())
    async with database.read() as conn:
        count = (await conn.execute(select(func.count()).select_from(outbox))).scalar()
        records = (
            await conn.execute(select(func.count()).select_from(idempotency_records))
        ).scalar()
    assert count == 2  # created + deposited
    assert records == 3  # create, deposit, the stored rejection


async def test_list_events_pages_newest_first_with_balance_after(service):
    wallet_id = await new_wallet(service)
    for amount in range(1, 8):
        await service.deposit(wallet_id, amount, rid())
    seen = []
    token = ""
    pages = 0
    while True:
        events, token = await service.list_events(wallet_id, 3, token)
        seen.extend(events)
        pages += 1
        if not token:
            break
    assert pages == 3
    assert [e.sequence for e in seen] == list(range(8, 0, -1))
    assert [e.balance_after for e in seen[:3]] == [28, 21, 15]
    default_page, token = await service.list_events(wallet_id)
    assert len(default_page) == 8 and token == ""
    exact, token = await service.list_events(wallet_id, 8)
    assert len(exact) == 8 and token == ""


async def test_list_events_rejects_bad_paging(service):
    wallet_id = await new_wallet(service)
    other = await new_wallet(service)
    for _ in range(3):
        await service.deposit(other, 1, rid())
    _, token = await service.list_events(other, 1)
    for size, page_token, field in [
        (-1, "", "page_size"),
        (1001, "", "page_size"),
        (10, "%%%garbage", "page_token"),
        (10, token, "page_token"),  # a token of another wallet's listing
    ]:
        with pytest.raises(InvalidArgumentError) as raised:
            await service.list_events(wallet_id, size, page_token)
        assert raised.value.field == field


async def test_time_travel_by_sequence_and_by_time(service):
    wallet_id = await new_wallet(service)
    created = await service.get_wallet(wallet_id)
    await service.deposit(wallet_id, 100, rid())
    await service.set_frozen(wallet_id, rid(), freeze=True)
    await service.set_frozen(wallet_id, rid(), freeze=False)
    after_withdraw = (await service.withdraw(wallet_id, 40, rid())).wallet
    now = await service.get_wallet(wallet_id)
    assert (now.balance, now.version, now.status) == (60, 5, domain.ACTIVE)

    at = {n: await service.get_wallet(wallet_id, as_of_sequence=n) for n in range(1, 6)}
    assert [at[n].balance for n in range(1, 6)] == [0, 100, 100, 100, 60]
    assert [at[n].status for n in range(1, 6)] == [
        domain.ACTIVE,
        domain.ACTIVE,
        domain.FROZEN,
        domain.ACTIVE,
        domain.ACTIVE,
    ]
    assert all(at[n].version == n for n in at)
    assert all(at[n].created_at == created.created_at for n in at)

    events, _ = await service.list_events(wallet_id)
    by_sequence = {e.sequence: e for e in events}
    for n in range(1, 6):
        moment = by_sequence[n].occurred_at
        past = await service.get_wallet(wallet_id, as_of_time=moment)
        assert past.version >= n  # events at the same instant: the last one counts
        assert past.balance == by_sequence[past.version].balance_after
    future = await service.get_wallet(
        wallet_id, as_of_time=after_withdraw.updated_at + timedelta(days=1)
    )
    assert future == now
    with pytest.raises(NotFoundError) as before_creation:
        await service.get_wallet(wallet_id, as_of_time=created.created_at - timedelta(seconds=1))
    assert before_creation.value.field == "as_of_time"
    with pytest.raises(InvalidArgumentError):
        await service.get_wallet(wallet_id, as_of_sequence=6)
    with pytest.raises(InvalidArgumentError):
        await service.get_wallet(wallet_id, as_of_sequence=-1)


async def test_sequence_wins_over_time_when_both_are_given(service):
    wallet_id = await new_wallet(service, 10)
    created = await service.get_wallet(wallet_id, as_of_sequence=1)
    both = await service.get_wallet(
        wallet_id, as_of_sequence=2, as_of_time=created.created_at - timedelta(days=1)
    )
    assert both.balance == 10


async def test_plain_get_wallet_is_the_stored_row(service, database):
    """GetWallet without time travel (on PostgreSQL the driver-level read,
    ``adapters.reads.pg_read_wallet``) returns exactly the row the SQLAlchemy read returns:
    balance, version, status, currency and both timestamps, for an active and a frozen
    wallet, and NOT_FOUND for an unknown one."""
    from wallet_service.adapters import ledger_sql
    from wallet_service.adapters.reads import pg_read_wallet

    active = await new_wallet(service, balance=1234, currency="EUR")
    frozen = await new_wallet(service, balance=99)
    await service.set_frozen(frozen, rid(), freeze=True)
    for wallet_id in (active, frozen):
        async with database.read() as conn:
            stored = await ledger_sql.get_wallet(conn, wallet_id)
        assert stored is not None
        assert await service.get_wallet(wallet_id) == stored
        if database.is_postgres:
            assert await pg_read_wallet(database, wallet_id) == stored
    assert (await service.get_wallet(frozen)).status == domain.FROZEN
    assert (await service.get_wallet(active)).currency == "EUR"
    with pytest.raises(WalletNotFoundError):
        await service.get_wallet("nobody-here")
    if database.is_postgres:
        assert await pg_read_wallet(database, "nobody-here") is None


async def test_plain_get_wallet_on_an_unreachable_database_is_unavailable():
    from wallet_platform.config import Settings
    from wallet_platform.errors import UnavailableError
    from wallet_platform.storage.database import Database

    db = Database.from_settings(
        Settings(database_url="postgresql+psycopg://root@127.0.0.1:1/nowhere")
    )
    try:
        with pytest.raises(UnavailableError, match="database unavailable"):
            await WalletService(db).get_wallet("w-1")
    finally:
        await db.dispose()
