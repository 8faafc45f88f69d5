"""The movement rule in PostgreSQL's SQL agrees with the domain on every case.

The two statements that move a balance in SQL, the single-request fast path
(``adapters.pg_move.PG_MOVE``) and the group commit (``adapters.pg_batch.MOVE_MANY``),
build their ``WHERE`` clause from the domain (``adapters.movement_sql``). Every case
(movement x wallet status x requested currency x balance and amount at and around the
funds and overflow bounds) runs through both: each applies exactly when
:func:`wallet_service.domain.plan_movement` accepts the change. Transfer steps that
settle a hold get a matching OPEN hold, so only the movement rule decides.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime

import pytest

from tests.conftest import requires_postgres
from wallet_platform.config import Settings
from wallet_platform.errors import WalletPlatformError
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import transfer_holds, wallets
from wallet_service import domain, holds, moves
from wallet_service.adapters import pg_move
from wallet_service.adapters.group_commit import GroupCommitter, MoveRequest
from wallet_service.domain import INT64_MAX, Movement

pytestmark = requires_postgres

WALLET_CURRENCY = "USD"
OTHER = "other-wallet"

# (balance, amount): below, at and above each bound of domain.balance_bounds.
BALANCES_AND_AMOUNTS = (
    (0, 1),
    (4, 5),
    (5, 5),
    (6, 5),
    (INT64_MAX - 6, 5),
    (INT64_MAX - 5, 5),
    (INT64_MAX - 4, 5),
    (INT64_MAX, 1),
    (0, INT64_MAX),
    (INT64_MAX, INT64_MAX),
)

CASES = [
    (movement, status, currency, balance, amount)
    for movement, status, (balance, amount) in itertools.product(
        Movement, (domain.ACTIVE, domain.FROZEN), BALANCES_AND_AMOUNTS
    )
    # Deposits and withdrawals name no currency; transfer steps always name one.
    for currency in ((WALLET_CURRENCY, "EUR") if movement.is_transfer_step else ("",))
]


@pytest.fixture
async def db(pg_database_url_fresh: str):
    database = Database.from_settings(Settings(database_url=pg_database_url_fresh))
    yield database
    await database.dispose()


async def plant_wallet(db: Database, status: str, balance: int) -> domain.Wallet:
    now = datetime.now(UTC)
    wallet = domain.Wallet(
        f"w-{uuid.uuid4().hex[:12]}", WALLET_CURRENCY, balance, status, 1, now, now
    )
    async with db.transaction() as conn:
        await conn.execute(wallets.insert().values(**wallet.__dict__))
    return wallet


def command_for(movement: Movement, wallet_id: str, amount: int, currency: str):
    if not movement.is_transfer_step:
        return moves.client_move(movement, wallet_id, amount, uuid.uuid4().hex)
    return moves.transfer_step(
        movement,
        wallet_id,
        amount,
        transfer_id=f"t-{uuid.uuid4().hex[:12]}",
        currency=currency,
        to_wallet_id=OTHER if movement is Movement.TRANSFER_DEBIT else "",
    )


async def plant_matching_hold(db: Database, command: moves.MoveCommand) -> None:
    """An OPEN hold the step may settle, so the hold gate lets it through."""
    action = command.hold_action
    if action is None or action.party is None:
        return
    ends = {"from_wallet_id": OTHER, "to_wallet_id": OTHER, action.party: command.wallet_id}
    now = datetime.now(UTC)
    async with db.transaction() as conn:
        await conn.execute(
            transfer_holds.insert().values(
                transfer_id=command.transfer_id,
                amount=command.amount,
                currency=command.currency,
                state=holds.OPEN,
                created_at=now,
                updated_at=now,
                **ends,
            )
        )


def domain_accepts(wallet: domain.Wallet, command: moves.MoveCommand) -> bool:
    try:
        domain.plan_movement(wallet, command.movement, command.amount, command.currency)
    except WalletPlatformError:
        return False
    return True


async def test_sql_and_domain_agree_on_every_movement_case(db: Database):
    group = GroupCommitter(db, lambda: datetime.now(UTC))
    outcomes: dict[str, set[bool]] = {"fast": set(), "group": set()}
    disagreements = []
    for movement, status, currency, balance, amount in CASES:
        for path in ("fast", "group"):
            wallet = await plant_wallet(db, status, balance)
            command = command_for(movement, wallet.wallet_id, amount, currency)
            await plant_matching_hold(db, command)
            expected = domain_accepts(wallet, command)
            if path == "fast":
                async with db.transaction() as conn:
                    result = await pg_move.move(conn, command, str(uuid.uuid4()), datetime.now(UTC))
                    applied = result.wallet is not None
                    await conn.rollback()
            else:
                future = asyncio.get_running_loop().create_future()
                applied = bool(await group._execute([MoveRequest(command, future)]))
            outcomes[path].add(applied)
            if applied != expected:
                case = (path, movement.name, status, currency, balance, amount)
                disagreements.append(case)
    await group.stop()
    assert disagreements == []
    # Both verdicts occurred on both paths: the comparison could have failed.
    assert outcomes == {"fast": {True, False}, "group": {True, False}}
