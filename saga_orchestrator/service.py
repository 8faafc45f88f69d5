"""The TransferService use cases, in domain terms (the gRPC layer only translates).

CreateTransfer is idempotent on request_id: the transfers table has a unique key on it
and stores a fingerprint of (from, to, amount). The same request again returns the
existing transfer (``replayed``); other parameters under the same key fail with
ALREADY_EXISTS. Wallets are checked up front (existence, same currency) through
WalletService, so a typo is a NOT_FOUND for the caller rather than a FAILED saga;
balance and frozen status are left to the saga's steps, which decide them atomically.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from saga_orchestrator.domain import (
    StepName,
    Transfer,
    TransferState,
    transfer_fingerprint,
)
from saga_orchestrator.engine.runner import SagaRunner
from saga_orchestrator.gateway import StepFailedError, WalletGateway, WalletInfo
from saga_orchestrator.notifier import TransferNotifier, TransferWaiter
from saga_orchestrator.repository import DuplicateRequestError, Summary, TransferRepository
from wallet_platform import validation
from wallet_platform.errors import (
    CurrencyMismatchError,
    IdempotencyKeyReusedError,
    InvalidArgumentError,
    TransferNotFoundError,
    UnavailableError,
    WalletNotFoundError,
)
from wallet_platform.observability import tracing
from wallet_platform.observability.logs import audit_id_var

# How often CreateTransfer re-reads a transfer it waits for that another replica drives.
WAIT_POLL_SECONDS = 0.2
# Wallets whose currency CreateTransfer remembers (an LRU; a few MB at most).
WALLET_CACHE_SIZE = 100_000
# WalletService GetWallet calls in flight at once (cache misses; a batch can have many).
LOOKUP_CONCURRENCY = 64


@dataclass(frozen=True)
class TransferPage:
    transfers: list[Transfer]
    next_after: tuple[datetime, str] | None


class TransferService:
    def __init__(
        self,
        repository: TransferRepository,
        runner: SagaRunner,
        gateway: WalletGateway,
        notifier: TransferNotifier,
        *,
        wait_seconds: float,
        lookup_timeout: float = 5.0,
    ) -> None:
        self.repository = repository
        self.runner = runner
        self.gateway = gateway
        self.notifier = notifier
        self.wait_seconds = wait_seconds
        self.lookup_timeout = lookup_timeout
        self._wallets: collections.OrderedDict[str, WalletInfo] = collections.OrderedDict()
        self._lookups: dict[str, asyncio.Future[WalletInfo]] = {}
        self._lookup_slots = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    def wait_deadline(self) -> float:
        """When a wait for a saga started now ends (event-loop time)."""
        return asyncio.get_running_loop().time() + self.wait_seconds

    async def create_transfer(
        self,
        request_id: str,
        from_wallet_id: str,
        to_wallet_id: str,
        amount: int,
        *,
        deadline: float | None = None,
    ) -> tuple[Transfer, bool]:
        """Start a saga (or find the one this request_id started); returns (transfer, replayed).

        The answer waits for the saga to end until ``deadline`` (event-loop time;
        default: ``wait_seconds`` from now), then gives it as it stands. A batch passes
        one deadline to all its items (``saga_orchestrator.batch``).
        """
        if deadline is None:
            deadline = self.wait_deadline()
        validation.request_id(request_id)
        validation.wallet_id(from_wallet_id, "from_wallet_id")
        validation.wallet_id(to_wallet_id, "to_wallet_id")
        validation.amount(amount)
        if from_wallet_id == to_wallet_id:
            raise InvalidArgumentError(
                "from_wallet_id and to_wallet_id must differ", field="to_wallet_id"
            )
        fingerprint = transfer_fingerprint(from_wallet_id, to_wallet_id, amount)

        # No request_id lookup up front: a retry of an accepted request hits the
        # insert's unique key below and is answered there (replay, or
        # REQUEST_ID_REUSED). Only when the wallet checks fail is the request_id looked
        # up first, so that an existing request still wins over what the wallets say
        # now, exactly as if it had been looked up before them: a read saved per
        # transfer.
        try:
            sender, receiver = self._known_pair(from_wallet_id, to_wallet_id) or (
                await asyncio.gather(self._wallet(from_wallet_id), self._wallet(to_wallet_id))
            )
            if sender.currency != receiver.currency:
                raise CurrencyMismatchError(
                    f"cannot transfer from {sender.currency} wallet {from_wallet_id!r} "
                    f"to {receiver.currency} wallet {to_wallet_id!r}"
                )
        except (WalletNotFoundError, CurrencyMismatchError, UnavailableError):
            existing = await self.repository.get_by_request_id(request_id)
            if existing is not None:
                return await self._replay(existing, fingerprint, deadline), True
            raise

        transfer_id = str(uuid.uuid4())
        with tracing.span("saga create", attributes={"wallet.transfer.id": transfer_id}) as span:
            now = self.runner.clock()
            transfer = Transfer.pending(
                transfer_id=transfer_id,
                request_id=request_id,
                from_wallet_id=from_wallet_id,
                to_wallet_id=to_wallet_id,
                amount=amount,
                currency=sender.currency,
                lease_owner=self.runner.owner,
                lease_expires_at=self.runner.lease_until(),
                now=now,
                audit_id=audit_id_var.get() or "",
                # Stored with the saga: its spans are children of this one.
                traceparent=tracing.current_traceparent(),
            )
            # The insert also records the first debit call (its 'before' write).
            transfer = transfer.begin_step(StepName.DEBIT, now)
            try:
                await self.repository.insert(transfer)
                duplicate = False
            except DuplicateRequestError:
                duplicate = True  # a replay, not a failure of the span
                if span is not None:
                    span.set_attribute("wallet.transfer.request_id_taken", True)
        if duplicate:
            # This request_id exists (a retry, or a concurrent identical request won the
            # insert): answer as its replay.
            existing = await self.repository.get_by_request_id(request_id)
            if existing is None:  # pragma: no cover - the unique key says it exists
                raise UnavailableError("transfer insert conflicted; retry") from None
            return await self._replay(existing, fingerprint, deadline), True
        self.notifier.publish(transfer)
        with self.notifier.waiter(transfer.transfer_id) as waiter:
            self.runner.spawn(transfer.transfer_id, transfer, begun=True)
            return await self._wait(waiter, transfer, deadline), False

    async def _replay(self, existing: Transfer, fingerprint: str, deadline: float) -> Transfer:
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReusedError(
                f"request_id {existing.request_id!r} was already used for another transfer "
                f"({existing.transfer_id})",
                field="request_id",
            )
        if existing.is_terminal:
            return existing
        return await self.wait_for_terminal(existing.transfer_id, deadline)

    def _known_pair(
        self, from_wallet_id: str, to_wallet_id: str
    ) -> tuple[WalletInfo, WalletInfo] | None:
        """Both wallets from the cache when both are there with the same currency."""
        sender = self._wallets.get(from_wallet_id)
        receiver = self._wallets.get(to_wallet_id)
        if sender is None or receiver is None or sender.currency != receiver.currency:
            return None
        self._wallets.move_to_end(from_wallet_id)
        self._wallets.move_to_end(to_wallet_id)
        return sender, receiver

    async def _wallet(self, wallet_id: str) -> WalletInfo:
        """The wallet's currency, from WalletService once and then from memory: a
        wallet's currency never changes and wallets are never deleted, so a cached
        answer cannot go stale (frozen status is not cached; the steps decide it).

        Concurrent lookups of one wallet (a batch's items, simultaneous calls) share
        one call, and at most :data:`LOOKUP_CONCURRENCY` calls run at once, so a batch
        naming many new wallets does not flood WalletService.
        """
        cached = self._wallets.get(wallet_id)
        if cached is not None:
            self._wallets.move_to_end(wallet_id)
            return cached
        lookup = self._lookups.get(wallet_id)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(wallet_id))
            self._lookups[wallet_id] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(wallet_id, done))
        # Shielded: one caller giving up (its call cancelled) does not fail the others.
        return await asyncio.shield(lookup)

    def _lookup_done(self, wallet_id: str, lookup: asyncio.Future[WalletInfo]) -> None:
        self._lookups.pop(wallet_id, None)
        if not lookup.cancelled():
            lookup.exception()  # retrieved: no warning when every waiter gave up

    async def _look_up(self, wallet_id: str) -> WalletInfo:
        try:
            async with self._lookup_slots:
                info = await self.gateway.get_wallet(wallet_id, self.lookup_timeout)
        except StepFailedError as failed:
            if failed.error.code == "NOT_FOUND":
                raise WalletNotFoundError(wallet_id) from None
            raise UnavailableError(
                f"cannot check wallet {wallet_id!r} with WalletService: {failed.error.describe()}"
            ) from None
        self._wallets[wallet_id] = info
        while len(self._wallets) > WALLET_CACHE_SIZE:
            self._wallets.popitem(last=False)
        return info

    async def wait_for_terminal(self, transfer_id: str, deadline: float | None = None) -> Transfer:
        """The transfer once terminal, or as it stands when the wait is over."""
        with self.notifier.waiter(transfer_id) as waiter:
            transfer = await self.repository.get(transfer_id)  # after subscribing: no gap
            if transfer is None:
                raise TransferNotFoundError(transfer_id)
            if deadline is None:
                deadline = self.wait_deadline()
            return await self._wait(waiter, transfer, deadline)

    async def _wait(self, waiter: TransferWaiter, transfer: Transfer, deadline: float) -> Transfer:
        """Follow the saga until ``deadline``: pushed changes when this replica drives
        it, else a poll."""
        loop = asyncio.get_running_loop()
        while not transfer.is_terminal:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            local = self.runner.is_driving(transfer.transfer_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    waiter.changed.wait(), remaining if local else min(remaining, WAIT_POLL_SECONDS)
                )
            waiter.changed.clear()
            if waiter.latest is not None and local:
                transfer = waiter.latest
            else:
                transfer = await self._reread(transfer)
        if transfer.is_terminal:
            return transfer
        if self.runner.is_driving(transfer.transfer_id):
            # Every change this replica commits is published: the newest is how it
            # stands, without a read per waiting call (a batch ends many waits at once).
            return waiter.latest or transfer
        return await self._reread(transfer)  # as it stands, driven elsewhere

    async def _reread(self, transfer: Transfer) -> Transfer:
        fresh = await self.repository.get(transfer.transfer_id)
        return fresh if fresh is not None else transfer

    async def get_transfer(self, transfer_id: str) -> Transfer:
        validation.transfer_id(transfer_id)
        transfer = await self.repository.get(transfer_id)
        if transfer is None:
            raise TransferNotFoundError(transfer_id)
        return transfer

    async def list_transfers(
        self,
        *,
        state: TransferState | None,
        wallet_id: str,
        page_size: int,
        after: tuple[datetime, str] | None,
    ) -> TransferPage:
        if wallet_id:
            validation.wallet_id(wallet_id)
        limit = validation.page_size(page_size)
        rows = await self.repository.list_page(
            state=state, wallet_id=wallet_id or None, limit=limit + 1, after=after
        )
        page = rows[:limit]
        next_after = None
        if len(rows) > limit:
            last = page[-1]
            next_after = (last.created_at, last.transfer_id)
        return TransferPage(page, next_after)

    async def summary(self) -> Summary:
        return await self.repository.summary()
