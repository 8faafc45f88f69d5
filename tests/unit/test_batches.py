"""The batch table: items, their single RPCs, tenancy per item, the size cap, audit ids."""

from __future__ import annotations

import uuid

import pytest
from google.rpc import status_pb2

from wallet.v1 import wallet_pb2 as pb
from wallet_platform.errors import InvalidArgumentError
from wallet_platform.server.audit_calls import is_write_method
from wallet_platform.server.batches import (
    BATCH_METHODS,
    MAX_BATCH_ITEMS,
    batch_items,
    item_audit_id,
)
from wallet_platform.server.grants import Principal
from wallet_platform.server.rpc_policy import policy
from wallet_platform.server.tenancy import tenant_refusal
from wallet_service.grpc_batches import check_size

WALLET = "/wallet.v1.WalletService/"
ACME = Principal("acme", frozenset({"admin"}), "acme-")


def steps(*operations: pb.StepOperation) -> pb.BatchApplyTransferStepsRequest:
    return pb.BatchApplyTransferStepsRequest(operations=operations)


def test_every_batch_is_a_write_and_its_items_are_single_rpcs_tenancy_knows():
    for method, shape in BATCH_METHODS.items():
        assert is_write_method(method)
        assert all(policy(single).wallet_fields for single in shape.kinds.values())


def test_step_items_name_their_single_rpc_or_none():
    debit = pb.DebitForTransferRequest(wallet_id="a", to_wallet_id="b")
    items = batch_items(
        WALLET + "BatchApplyTransferSteps",
        steps(pb.StepOperation(debit=debit), pb.StepOperation()),
    )
    assert [(i.index, i.method, i.request) for i in items] == [
        (0, WALLET + "DebitForTransfer", debit),
        (1, None, None),
    ]


def test_a_tenant_is_refused_for_any_foreign_item():
    deposits = pb.BatchDepositRequest(
        requests=[pb.DepositRequest(wallet_id="acme-1"), pb.DepositRequest(wallet_id="beta-1")]
    )
    refusal = tenant_refusal(ACME, WALLET + "BatchDeposit", deposits)
    assert refusal is not None and "requests[1].wallet_id='beta-1'" in refusal
    del deposits.requests[1]
    assert tenant_refusal(ACME, WALLET + "BatchDeposit", deposits) is None
    leak = pb.StepOperation(
        debit=pb.DebitForTransferRequest(wallet_id="acme-1", to_wallet_id="beta-1")
    )
    refusal = tenant_refusal(ACME, WALLET + "BatchApplyTransferSteps", steps(leak))
    assert refusal is not None and "operations[0].to_wallet_id" in refusal
    refusal = tenant_refusal(ACME, WALLET + "BatchApplyTransferSteps", steps(pb.StepOperation()))
    assert refusal is not None and "operations[0]" in refusal
    unlimited = Principal("root", frozenset({"admin"}), None)
    assert tenant_refusal(unlimited, WALLET + "BatchApplyTransferSteps", steps(leak)) is None


@pytest.mark.parametrize("count", [0, MAX_BATCH_ITEMS + 1])
def test_the_size_cap(count):
    with pytest.raises(InvalidArgumentError) as refused:
        check_size([None] * count, "requests")
    assert refused.value.field == "requests"
    check_size([None], "requests")
    check_size([None] * MAX_BATCH_ITEMS, "requests")


def test_item_audit_ids_are_stable_distinct_uuids():
    batch = str(uuid.uuid4())
    ids = [item_audit_id(batch, i) for i in range(MAX_BATCH_ITEMS)]
    assert len(set(ids)) == MAX_BATCH_ITEMS and batch not in ids
    assert ids == [item_audit_id(batch, i) for i in range(MAX_BATCH_ITEMS)]
    assert all(len(i) == 36 for i in ids)


def test_reservations_count_towards_a_full_backlog():
    from wallet_platform.observability.audit_backlog import AuditBacklog

    backlog = AuditBacklog(10_000)
    assert backlog.reserve(6_000) and not backlog.full
    assert not backlog.reserve(5_000)  # two batches cannot both promise themselves the room
    assert backlog.reserve(4_000) and backlog.full
    backlog.release(4_000)
    backlog.release(6_000)
    assert backlog.reserved == 0 and not backlog.full


async def test_items_of_all_batches_share_the_slots_and_always_give_them_back():
    import asyncio

    from wallet_service.grpc_batches import run_items

    slots = asyncio.Semaphore(3)
    running = peak = 0
    release = asyncio.Event()

    async def item(value: int) -> pb.DepositResponse:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        if value == 2:
            raise InvalidArgumentError("bad", field="amount")
        return pb.DepositResponse(replayed=bool(value % 2))

    def calls(n: int) -> list:
        return [(lambda v=v: item(v)) for v in range(n)]

    both = asyncio.gather(run_items("m", calls(5), slots), run_items("m", calls(4), slots))
    await asyncio.sleep(0.05)
    assert peak == 3  # two batches of 9 items, never more than 3 running
    release.set()
    first, second = await both
    assert [type(o).__name__ for o in first] == [
        "DepositResponse", "DepositResponse", "Status", "DepositResponse", "DepositResponse"
    ]  # fmt: skip
    refused = first[2]
    assert isinstance(refused, status_pb2.Status)
    assert refused.code == 3 and [o.replayed for o in second if hasattr(o, "replayed")] == [
        False, True, True
    ]  # fmt: skip
    # A batch cancelled mid-way gives back every slot it held.
    release.clear()
    cancelled = asyncio.create_task(run_items("m", calls(5), slots))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    for _ in range(3):  # all three free again: each is taken at once
        await asyncio.wait_for(slots.acquire(), 1)
    assert slots.locked()
