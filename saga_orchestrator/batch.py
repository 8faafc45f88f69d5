"""BatchCreateTransfers: many independent CreateTransfer calls in one request.

Each item goes through exactly the single call's path (``TransferService.create_transfer``:
validation, the up-front wallet checks, idempotency on its own request_id, the saga
start), all items concurrently, so their inserts reach the saga group commit together
and leave in a few statements (PostgreSQL; ``saga_orchestrator.group_commit``). Each
item's outcome is what the single call would have answered: its transfer (with
``replayed``) or its error. Items are independent: one item's failure never touches
another, and the order of the answers is the order of the requests.

Limits and policies:

- :data:`MAX_BATCH_TRANSFERS` items at most, at least one; otherwise the whole call is
  INVALID_ARGUMENT (field ``requests``) and nothing starts.
- The wait is shared: every item follows its saga until ONE deadline, the single
  call's wait (``WALLET_TRANSFER_WAIT_MS``) from the start of the batch, then is
  answered as it stands. A big batch is answered in about that time even when its
  sagas take longer; non-terminal results are followed with GetTransfer or
  WatchTransfers (``walletctl bulk transfer --wait``).
- Authorisation is per call, before any item starts (``wallet_platform.server``): the
  caller needs the role CreateTransfer needs, and a tenant-limited caller must own
  both wallet ids of every item, else the whole call is PERMISSION_DENIED.
- Two items with the same request_id behave as two concurrent single calls with it:
  one starts the saga, the other is its replay (or REQUEST_ID_REUSED).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from saga_orchestrator.domain import Transfer
from saga_orchestrator.service import TransferService
from wallet_platform.errors import InvalidArgumentError

# The most transfers one BatchCreateTransfers call may carry (the one definition).
MAX_BATCH_TRANSFERS = 1000


@dataclass(frozen=True)
class TransferRequest:
    """One item: the fields of a CreateTransfer request."""

    request_id: str
    from_wallet_id: str
    to_wallet_id: str
    amount: int


# An item's outcome: the single call's (transfer, replayed), or the error it fails with.
ItemOutcome = tuple[Transfer, bool] | Exception


def check_batch_size(count: int) -> None:
    """INVALID_ARGUMENT unless 1 <= ``count`` <= :data:`MAX_BATCH_TRANSFERS`."""
    if count == 0:
        raise InvalidArgumentError("requests must hold at least one transfer", field="requests")
    if count > MAX_BATCH_TRANSFERS:
        raise InvalidArgumentError(
            f"requests holds {count} transfers; at most {MAX_BATCH_TRANSFERS} per call",
            field="requests",
        )


async def create_transfers(
    service: TransferService, requests: Sequence[TransferRequest]
) -> list[ItemOutcome]:
    """Every item through ``service.create_transfer``, concurrently; outcomes in order."""
    check_batch_size(len(requests))
    deadline = service.wait_deadline()

    async def one(item: TransferRequest) -> ItemOutcome:
        try:
            return await service.create_transfer(
                item.request_id,
                item.from_wallet_id,
                item.to_wallet_id,
                item.amount,
                deadline=deadline,
            )
        except Exception as error:  # the item's answer; the other items go on
            return error

    return list(await asyncio.gather(*(one(item) for item in requests)))
