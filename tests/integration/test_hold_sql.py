"""Transfer holds in PostgreSQL's SQL: it agrees with the domain, and holds under races.

1. Every case (hold state x step x wallet x amount x currency) runs through the two
   statements that decide steps in SQL, the single-request fast path
   (``adapters.pg_move.PG_MOVE``) and the group commit (``adapters.pg_batch.MOVE_MANY``): each
   applies exactly when :func:`wallet_service.holds.check_step` accepts the step.
2. Many concurrent credits and refunds of the same OPEN hold, from several services
   (group commit and single path, separate transactions): exactly one applies.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from tests.conftest import requires_postgres
from tests.e2e.test_hold_attacks import assert_conserved, hold_state
from wallet_platform.config import Settings
from wallet_platform.errors import UnavailableError, WalletPlatformError
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import transfer_holds, wallet_events
from wallet_service import holds, moves
from wallet_service.adapters import pg_move
from wallet_service.adapters.group_commit import MoveRequest
from wallet_service.domain import Movement
from wallet_service.service import WalletService

pytestmark = requires_postgres

SOURCE, DESTINATION, STRANGER = "src", "dst", "xyz"
HOLD_AMOUNT = 50


@pytest.fixture
async def db(pg_database_url_fresh: str):
    database = Database.from_settings(Settings(database_url=pg_database_url_fresh, db_pool_size=12))
    yield database
    await database.dispose()


async def plant_hold(db: Database, transfer_id: str, state: str | None) -> holds.Hold | None:
    if state is None:
        return None
    hold = holds.Hold(transfer_id, SOURCE, DESTINATION, HOLD_AMOUNT, "USD", state)
    now = datetime.now(UTC)
    async with db.transaction() as conn:
        await conn.execute(
            transfer_holds.insert().values(**hold.__dict__, created_at=now, updated_at=now)
        )
    return hold


def domain_accepts(hold: holds.Hold | None, command: moves.MoveCommand) -> bool:
    try:
        command.check_hold(hold)
    except WalletPlatformError:
        return False
    return True


CASES = list(
    itertools.product(
        (None, holds.OPEN, holds.POSTED, holds.VOIDED),
        (Movement.TRANSFER_DEBIT, Movement.TRANSFER_CREDIT, Movement.TRANSFER_REFUND),
        (SOURCE, DESTINATION, STRANGER),
        (HOLD_AMOUNT, HOLD_AMOUNT + 1),
        ("USD", "EUR"),
    )
)


async def test_sql_and_domain_agree_on_every_case(db: Database):
    service = WalletService(db)
    for wallet_id in (SOURCE, DESTINATION, STRANGER):
        for currency in ("USD", "EUR"):
            name = wallet_id if currency == "USD" else f"{wallet_id}-eur"
            await service.create_wallet(name, currency, f"c-{name}")
            await service.deposit(name, 10_000_000, f"d-{name}")
    group = service.store.group
    assert group is not None
    disagreements = []
    for state, movement, wallet_id, amount, currency in CASES:
        # Wallet currency = the step's currency: only the hold decides, never the wallet.
        wallet = wallet_id if currency == "USD" else f"{wallet_id}-eur"
        for path in ("fast", "group"):
            transfer_id = f"t-{uuid.uuid4().hex[:12]}"
            hold = await plant_hold(db, transfer_id, state)
            to_wallet = STRANGER if wallet != STRANGER else DESTINATION
            command = moves.transfer_step(
                movement,
                wallet,
                amount,
                transfer_id=transfer_id,
                currency=currency,
                to_wallet_id=to_wallet if movement is Movement.TRANSFER_DEBIT else "",
            )
            expected = domain_accepts(hold, command)
            if path == "fast":
                async with db.transaction() as conn:
                    result = await pg_move.move(conn, command, str(uuid.uuid4()), datetime.now(UTC))
                    applied = result.wallet is not None
                    await conn.rollback()
            else:
                future = asyncio.get_running_loop().create_future()
                applied = bool(await group._execute([MoveRequest(command, future)]))
            if applied != expected:
                disagreements.append((path, state, movement.name, wallet, amount, currency))
    assert disagreements == []
    # (No conservation check here: the planted holds were never debited.)


async def test_concurrent_credits_and_refunds_of_one_hold_apply_once(db: Database):
    # Two services with group commit, two on the single path: separate transactions.
    services = [WalletService(db, group_commit=n < 2) for n in range(4)]
    first = services[0]
    for name in ("alice", "bob"):
        await first.create_wallet(name, "USD", f"c-{name}")
    await first.deposit("alice", 1_000_000, "d-alice")
    for round_number in range(8):
        transfer_id = f"race-{round_number}"
        await first.move(
            Movement.TRANSFER_DEBIT,
            "alice",
            100,
            "",
            transfer_id=transfer_id,
            currency="USD",
            to_wallet_id="bob",
        )

        async def attempt(n: int, transfer_id: str = transfer_id) -> str:
            service = services[n % len(services)]
            credit = n % 2 == 0
            movement = Movement.TRANSFER_CREDIT if credit else Movement.TRANSFER_REFUND
            wallet_id = "bob" if credit else "alice"
            for _ in range(20):
                try:
                    response = await service.move(
                        movement, wallet_id, 100, "", transfer_id=transfer_id, currency="USD"
                    )
                except UnavailableError:
                    await asyncio.sleep(0.01)  # a lock conflict rolled back: ask again
                    continue
                except WalletPlatformError as refused:
                    return refused.error_reason
                return "replayed" if response.replayed else f"applied {movement.name}"
            raise AssertionError("still unavailable after 20 tries")

        outcomes = await asyncio.gather(*(attempt(n) for n in range(40)))
        applied = [o for o in outcomes if o.startswith("applied")]
        assert len(applied) == 1, outcomes
        winner_is_credit = applied[0].endswith("CREDIT")
        loser_reason = "HOLD_ALREADY_POSTED" if winner_is_credit else "HOLD_ALREADY_VOIDED"
        assert set(outcomes) - set(applied) <= {"replayed", loser_reason}, outcomes
        state = await hold_state(db, transfer_id)
        async with db.read() as conn:
            settlements = (
                await conn.execute(
                    select(func.count())
                    .select_from(wallet_events)
                    .where(
                        wallet_events.c.transfer_id == transfer_id,
                        wallet_events.c.type.in_(("transfer_credited", "transfer_refunded")),
                    )
                )
            ).scalar()
        assert state == (holds.POSTED if winner_is_credit else holds.VOIDED)
        assert settlements == 1
        await assert_conserved(db)
    for service in services:
        if service.store.group is not None:
            await service.store.group.stop()
