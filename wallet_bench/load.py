"""The load generator: many concurrent clients sending a mix of writes for a while.

Every request is remembered in a client-side :class:`Ledger` (what was acknowledged,
what was definitely rejected, what is still unknown after a timeout). At the end,
unknown outcomes are resolved by resending the same ``request_id`` (the idempotent
retry a real client makes), unfinished transfers are polled to a terminal state, and
the ledger then predicts every wallet's balance and statistics exactly: that
prediction (:mod:`wallet_bench.ledger`) is what :mod:`wallet_bench.checks` compares
the platform against.

A share of requests (``retry_share``) is sent twice with the same ``request_id``; the
second answer must be the stored outcome of the first (``replayed``, same event, same
balance; or the same error).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc

from saga_orchestrator.domain import TERMINAL_STATES, TransferState
from wallet.v1 import transfer_pb2, wallet_pb2
from wallet_bench.client import Clients
from wallet_bench.ledger import OPERATIONS, Ledger, LoadConfig, Op
from wallet_bench.progress import ProgressBar
from wallet_bench.stats import RunStats

DEFINITE_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
TERMINAL: dict[int, str] = {
    transfer_pb2.TransferState.Value(f"TRANSFER_STATE_{state}"): str(state)
    for state in TERMINAL_STATES
}


def _code_name(error: grpc.aio.AioRpcError) -> str:
    return str(error.code().name)


class LoadGenerator:
    """Sets up the wallets, drives the load, then settles every outcome."""

    def __init__(self, clients: Clients, config: LoadConfig) -> None:
        self.clients = clients
        self.config = config
        self.ledger = Ledger()
        self.stats = RunStats([*OPERATIONS, "replay"])
        self.random = random.Random(config.seed)
        self.elapsed_s = 0.0
        self.started_at = 0.0
        self.finished_at = 0.0
        self._sent = 0
        self._choices = [name for name in OPERATIONS if config.mix.get(name)]
        self._weights = [config.mix[name] for name in self._choices]
        self._sequence = 0

    # --- set-up --------------------------------------------------------------------

    async def setup(self) -> None:
        """Create and fund the wallet pool (not measured)."""
        config = self.config
        semaphore = asyncio.Semaphore(max(config.concurrency, 8))

        async def one(index: int) -> None:
            wallet_id = config.wallet_id(index)
            async with semaphore:
                await self._settle(
                    lambda: self.clients.wallet.CreateWallet(
                        wallet_pb2.CreateWalletRequest(
                            wallet_id=wallet_id,
                            currency=config.currency,
                            request_id=f"{wallet_id}:create",
                        ),
                        timeout=config.deadline_s,
                    )
                )
                fund = Op("fund", f"{wallet_id}:fund", wallet_id, config.initial_balance)
                if config.initial_balance > 0:
                    await self._settle(lambda: self._send(fund))
                    self.ledger.acked[fund.request_id] = fund

        await asyncio.gather(*(one(i) for i in range(config.wallets)))

    async def _settle(self, call: Any, attempts: int = 20) -> Any:
        """Retry a set-up call through transient errors (it is idempotent)."""
        for attempt in range(attempts):
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                if error.code() in DEFINITE_CODES or attempt == attempts - 1:
                    raise
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        return None

    # --- the measured window -------------------------------------------------------

    def _pick_wallet(self, avoid: int = -1) -> int:
        config = self.config
        while True:
            hot = min(config.hot_wallets, config.wallets)
            if hot and self.random.random() < config.hot_skew:
                index = self.random.randrange(hot)
            else:
                index = self.random.randrange(config.wallets)
            if index != avoid or config.wallets < 2:
                return index

    def next_op(self) -> Op:
        config = self.config
        kind = self.random.choices(self._choices, self._weights)[0]
        self._sequence += 1
        request_id = f"wb-{config.run_id}:{kind[0]}{self._sequence}"
        amount = self.random.randint(1, config.max_amount)
        source = self._pick_wallet()
        if kind == "transfer":
            target = self._pick_wallet(avoid=source)
            return Op(kind, request_id, config.wallet_id(source), amount, config.wallet_id(target))
        return Op(kind, request_id, config.wallet_id(source), amount)

    async def _send(self, op: Op) -> Any:
        timeout = self.config.deadline_s
        if op.kind in ("deposit", "fund"):
            return await self.clients.wallet.Deposit(
                wallet_pb2.DepositRequest(
                    wallet_id=op.wallet_id, amount=op.amount, request_id=op.request_id
                ),
                timeout=timeout,
            )
        if op.kind == "withdraw":
            return await self.clients.wallet.Withdraw(
                wallet_pb2.WithdrawRequest(
                    wallet_id=op.wallet_id, amount=op.amount, request_id=op.request_id
                ),
                timeout=timeout,
            )
        return await self.clients.transfer.CreateTransfer(
            transfer_pb2.CreateTransferRequest(
                request_id=op.request_id,
                from_wallet_id=op.wallet_id,
                to_wallet_id=op.to_wallet_id,
                amount=op.amount,
            ),
            timeout=timeout,
        )

    async def _execute(self, op: Op) -> tuple[str, Any]:
        """Send once; returns (outcome, response or error code) and updates the ledger."""
        try:
            response = await self._send(op)
        except grpc.aio.AioRpcError as error:
            code = _code_name(error)
            if error.code() in DEFINITE_CODES:
                self.ledger.rejected[op.request_id] = (op, code)
            else:
                self.ledger.unknown[op.request_id] = op
            return code, error.code()
        self._note_success(op, response)
        if op.kind == "transfer":
            state = TERMINAL.get(response.transfer.state)
            if state is None:
                return "UNFINISHED", response
            return ("OK" if state == TransferState.COMPLETED else state), response
        return "OK", response

    def _note_success(self, op: Op, response: Any) -> None:
        self.ledger.unknown.pop(op.request_id, None)
        if op.kind != "transfer":
            self.ledger.acked[op.request_id] = op
            return
        transfer = response.transfer
        state = TERMINAL.get(transfer.state)
        if state is None:
            self.ledger.unfinished_transfers[transfer.transfer_id] = op
            self.ledger.transfers[transfer.transfer_id] = (op, "UNFINISHED")
        else:
            self.ledger.unfinished_transfers.pop(transfer.transfer_id, None)
            self.ledger.transfers[transfer.transfer_id] = (op, state)

    async def _replay(self, op: Op, outcome: str, first: Any) -> None:
        """Resend the same request and check the stored outcome comes back."""
        self.ledger.replays += 1
        started = time.perf_counter()
        try:
            again = await self._send(op)
            result = "OK"
        except grpc.aio.AioRpcError as error:
            again, result = error.code(), _code_name(error)
        self.stats.record("replay", (time.perf_counter() - started) * 1000, result)
        problem = _replay_problem(op, first, again)
        if problem:
            self.ledger.replay_mismatches.append(f"{op.request_id}: {problem}")

    async def _worker(self, deadline: float | None, budget: list[int]) -> None:
        config = self.config
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            if config.requests is not None:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            op = self.next_op()
            started = time.perf_counter()
            outcome, result = await self._execute(op)
            self.stats.record(op.kind, (time.perf_counter() - started) * 1000, outcome)
            self._sent += 1
            if config.retry_share and self.random.random() < config.retry_share:
                if isinstance(result, grpc.StatusCode) and result not in DEFINITE_CODES:
                    continue  # an unknown outcome is settled at the end instead
                await self._replay(op, outcome, result)

    async def run(self) -> None:
        """The measured window: ``concurrency`` clients until the duration or count."""
        config = self.config
        progress = ProgressBar(
            label=config.label,
            duration_s=config.duration_s if config.requests is None else None,
            requests=config.requests,
            enabled=config.progress,
        )
        self.started_at = time.monotonic()
        deadline = (
            self.started_at + config.duration_s
            if config.requests is None and config.duration_s
            else None
        )
        budget = [config.requests if config.requests is not None else 0]
        workers = [
            asyncio.create_task(self._worker(deadline, budget)) for _ in range(config.concurrency)
        ]
        pending = set(workers)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.25)
            progress.update(self.stats.total, self.stats.errors)
        for task in workers:
            task.result()  # surface a bug in the generator itself
        self.finished_at = time.monotonic()
        self.elapsed_s = self.finished_at - self.started_at
        progress.close(self.stats.total, self.stats.errors)

    # --- settling ------------------------------------------------------------------

    async def settle(self, timeout_s: float = 60.0) -> None:
        """Resolve unknown outcomes (resend) and wait for unfinished transfers."""
        give_up = time.monotonic() + timeout_s
        while self.ledger.unknown and time.monotonic() < give_up:
            for op in list(self.ledger.unknown.values()):
                await self._execute(op)
            if self.ledger.unknown:
                await asyncio.sleep(0.5)
        while self.ledger.unfinished_transfers and time.monotonic() < give_up:
            for transfer_id in list(self.ledger.unfinished_transfers):
                try:
                    response = await self.clients.transfer.GetTransfer(
                        transfer_pb2.GetTransferRequest(transfer_id=transfer_id),
                        timeout=self.config.deadline_s,
                    )
                except grpc.aio.AioRpcError:
                    continue
                op = self.ledger.unfinished_transfers[transfer_id]
                self._note_success(
                    op, transfer_pb2.CreateTransferResponse(transfer=response.transfer)
                )
            if self.ledger.unfinished_transfers:
                await asyncio.sleep(0.2)

    def summary(self) -> dict[str, Any]:
        ledger = self.ledger
        originals = self.stats.total - self.stats.ops["replay"].count
        return {
            "label": self.config.label,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests": originals,  # replays are counted under operations.replay
            "per_second": round(originals / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "operations": self.stats.summary(self.elapsed_s),
            "transfers": dict(ledger.transfer_states()),
            "transfers_completed_per_second": round(_completed_in_window(self) / self.elapsed_s, 1)
            if self.elapsed_s
            else 0.0,
            "replays": ledger.replays,
            "replay_mismatches": len(ledger.replay_mismatches),
            "unresolved": len(ledger.unknown) + len(ledger.unfinished_transfers),
        }


def _completed_in_window(generator: LoadGenerator) -> int:
    return generator.stats.ops["transfer"].outcomes.get("OK", 0)


def _replay_problem(op: Op, first: Any, again: Any) -> str:
    """Why a replayed answer differs from the original one ('' when it matches)."""
    if isinstance(first, grpc.StatusCode):
        if again != first:
            return f"first {first.name}, replay {getattr(again, 'name', 'OK')}"
        return ""
    if isinstance(again, grpc.StatusCode):
        return f"first OK, replay {again.name}"
    if not again.replayed:
        return "replay not flagged replayed"
    if op.kind == "transfer":
        if again.transfer.transfer_id != first.transfer.transfer_id:
            return "replay names another transfer"
        if first.transfer.state in TERMINAL and again.transfer.state != first.transfer.state:
            return "terminal state changed on replay"
        return ""
    if again.event.event_id != first.event.event_id:
        return "replay returned another event"
    if again.wallet.balance != first.wallet.balance:
        return "replay returned another balance"
    return ""
