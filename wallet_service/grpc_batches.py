"""The batch RPCs of WalletService: each item is its single call, run side by side.

``BatchDeposit``, ``BatchWithdraw`` and ``BatchApplyTransferSteps`` add no rule of
their own to money movement. A batch is refused as a whole only when it is not a batch
one may send: no items, or more than ``batches.MAX_BATCH_ITEMS`` (INVALID_ARGUMENT);
the role and the tenant's wallet prefix of every item are checked before this code
runs (``security``, ``tenancy``). Then every item goes through the single RPC's
servicer method (validation, the service operation, idempotency on its request_id)
and its outcome becomes its result: the single call's response, or the
``google.rpc.Status`` the single call would have ended with (``builder.error_status``).
Items are independent: one refused item leaves its neighbours alone.

Items run concurrently (``asyncio.gather``; at most ``MAX_ITEMS_IN_FLIGHT`` items of all
batch calls of the process at once), so the group commit
(``wallet_service.adapters.group_commit``) folds them into a few transactions. Concurrent items
have no order between them, so two items of one batch acting on the same idempotency
key or hold would race; the first of them runs and every later one is refused with
INVALID_ARGUMENT naming the first. The keys compared:

- deposits and withdrawals: the request_id (two items with one request_id would race
  for it: which one applies and which one replays is not up to the caller);
- steps: the transfer_id (a debit and its credit in one batch would race: the credit
  could run before the hold exists; a credit twice would race for the credit key).
  Send a transfer's next step in a later batch, once the previous one answered.

Each item runs under its own audit id (``batches.item_audit_id``), the id of its audit
row (``observability.audit_batch``), so its ledger events lead to that row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

from google.protobuf.message import Message
from google.rpc import status_pb2

from wallet.v1 import wallet_pb2
from wallet_platform.errors import InvalidArgumentError
from wallet_platform.observability.logs import audit_id_var
from wallet_platform.server.batches import MAX_BATCH_ITEMS, MAX_ITEMS_IN_FLIGHT, item_audit_id
from wallet_platform.server.builder import error_status

_WALLET = "/wallet.v1.WalletService/"

Context = Any  # grpc.aio.ServicerContext (grpc ships no type hints)
Outcome: TypeAlias = "Message | status_pb2.Status"
Single = Callable[[Any, Context], Awaitable[Any]]


def check_size(items: Sequence[Any], field: str) -> None:
    """Refuse a batch with no items or more than :data:`MAX_BATCH_ITEMS`."""
    if not items:
        raise InvalidArgumentError(
            f"{field} is empty: a batch needs at least one item", field=field
        )
    if len(items) > MAX_BATCH_ITEMS:
        raise InvalidArgumentError(
            f"{field} has {len(items)} items: a batch holds at most {MAX_BATCH_ITEMS}; "
            "split it into several batches",
            field=field,
        )


def _repeat(field: str, index: int, name: str, key: str, first: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{field}[{index}] repeats {name} {key[:64]!r} of {field}[{first}]: items of one "
        "batch run concurrently, send it in a later batch",
        field=f"{field}[{index}].{name}",
    )


async def run_items(
    method: str,
    calls: Sequence[Callable[[], Awaitable[Any]] | BaseException],
    slots: asyncio.Semaphore,
) -> list[Outcome]:
    """Run every call concurrently; each outcome is a response or its error's status.

    An entry that is already an exception (refused before running) becomes its status.
    Each running item holds one of the process's ``slots`` (``MAX_ITEMS_IN_FLIGHT``):
    an item's task is created only once it has one, so many concurrent batches wait
    for slots instead of holding a task per item each. ``method`` names the single RPC
    in the log of an unexpected error.
    """
    batch_audit_id = audit_id_var.get()
    outcomes: list[Outcome | None] = [None] * len(calls)
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int, call: Callable[[], Awaitable[Any]]) -> None:
        if batch_audit_id is not None:  # set in this item's task only
            audit_id_var.set(item_audit_id(batch_audit_id, index))
        try:
            outcomes[index] = await call()
        except Exception as error:
            outcomes[index] = error_status(error, method)

    try:
        for index, call in enumerate(calls):
            if isinstance(call, BaseException):
                outcomes[index] = error_status(call, method)
                continue
            await slots.acquire()
            task = asyncio.create_task(one(index, call))
            task.add_done_callback(lambda _: slots.release())  # also when cancelled
            tasks.append(task)
        await asyncio.gather(*tasks)
    except BaseException:  # the call was cancelled (client gone, deadline, stop)
        for task in tasks:
            task.cancel()
        raise
    answered = [outcome for outcome in outcomes if outcome is not None]
    assert len(answered) == len(calls)  # every item has run to an outcome
    return answered


class BatchMethods:
    """The three batch RPCs over the servicer's single-call methods."""

    def __init__(self, deposit: Single, withdraw: Single, steps: dict[str, Single]) -> None:
        self._slots = asyncio.Semaphore(MAX_ITEMS_IN_FLIGHT)  # shared by every batch call
        self._deposit = deposit
        self._withdraw = withdraw
        self._steps = steps  # "debit" / "credit" / "refund" -> the step RPC

    async def deposit(self, request: Any, context: Context) -> Any:
        outcomes = await self._client_moves(_WALLET + "Deposit", self._deposit, request, context)
        return wallet_pb2.BatchDepositResponse(
            results=[_client_result(wallet_pb2.BatchDepositResult, o) for o in outcomes]
        )

    async def withdraw(self, request: Any, context: Context) -> Any:
        outcomes = await self._client_moves(_WALLET + "Withdraw", self._withdraw, request, context)
        return wallet_pb2.BatchWithdrawResponse(
            results=[_client_result(wallet_pb2.BatchWithdrawResult, o) for o in outcomes]
        )

    async def _client_moves(
        self, method: str, single: Single, request: Any, context: Context
    ) -> list[Outcome]:
        check_size(request.requests, "requests")
        first_of: dict[str, int] = {}
        calls: list[Callable[[], Awaitable[Any]] | BaseException] = []
        for index, item in enumerate(request.requests):
            first = first_of.setdefault(item.request_id, index) if item.request_id else index
            if first != index:
                calls.append(_repeat("requests", index, "request_id", item.request_id, first))
            else:
                calls.append(_bound(single, item, context))
        return await run_items(method, calls, self._slots)

    async def apply_steps(self, request: Any, context: Context) -> Any:
        check_size(request.operations, "operations")
        first_of: dict[str, int] = {}
        calls: list[Callable[[], Awaitable[Any]] | BaseException] = []
        kinds: list[str | None] = []
        for index, operation in enumerate(request.operations):
            kind = operation.WhichOneof("step")
            kinds.append(kind)
            if kind is None:
                calls.append(
                    InvalidArgumentError(
                        f"operations[{index}] sets none of debit, credit, refund",
                        field=f"operations[{index}]",
                    )
                )
                continue
            step = getattr(operation, kind)
            first = first_of.setdefault(step.transfer_id, index) if step.transfer_id else index
            if first != index:
                calls.append(_repeat("operations", index, "transfer_id", step.transfer_id, first))
            else:
                calls.append(_bound(self._steps[kind], step, context))
        outcomes = await run_items(_WALLET + "BatchApplyTransferSteps", calls, self._slots)
        return wallet_pb2.BatchApplyTransferStepsResponse(
            results=[_step_result(kind, o) for kind, o in zip(kinds, outcomes, strict=True)]
        )


def _bound(single: Single, item: Any, context: Context) -> Callable[[], Awaitable[Any]]:
    return lambda: single(item, context)


def _client_result(result_type: Any, outcome: Outcome) -> Any:
    if isinstance(outcome, status_pb2.Status):
        return result_type(error=outcome)
    return result_type(response=outcome)


def _step_result(kind: str | None, outcome: Outcome) -> Any:
    if isinstance(outcome, status_pb2.Status) or kind is None:
        return wallet_pb2.StepOperationResult(error=outcome)
    result = wallet_pb2.StepOperationResult()
    getattr(result, kind).CopyFrom(outcome)
    return result
