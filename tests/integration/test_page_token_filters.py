"""Page tokens are bound to their filters, and forged tokens are INVALID_ARGUMENT.

Against a real stack (SQLite and PostgreSQL): ListTransfers, ListFraudAlerts and
ListWalletEvents hand out tokens that work with the filters they were issued for
(``page_size`` may change), are refused naming the filters that differ otherwise, and
a garbled or forged token, even one crafted to carry values the database cannot take,
is INVALID_ARGUMENT, never INTERNAL. A forged token of the right shape just moves the
starting point inside the caller's own listing.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import pytest

from tests.integration.walletctl_harness import running_stack
from wallet.v1 import (
    fraud_pb2,
    fraud_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
    wallet_pb2,
    wallet_pb2_grpc,
)
from wallet_platform import page_tokens

COMPLETED = transfer_pb2.TRANSFER_STATE_COMPLETED


def raw(listing: str, filters: Mapping[str, object], position: Mapping[str, object]) -> str:
    """A token as an attacker would craft it (no checks on the way out)."""
    document = {"l": listing, "f": dict(filters), "p": dict(position)}
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


async def invalid(call: Awaitable[Any]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    return raised.value.details() or ""


async def wait_for(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    """Until ``check()`` holds (the consumers apply events in the background)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_tokens_follow_their_filters_and_forgeries_are_refused(database_url: str) -> None:
    async with (
        running_stack(database_url, fraud_large_withdrawal=100) as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        wallets = wallet_pb2_grpc.WalletServiceStub(channel)
        transfers = transfer_pb2_grpc.TransferServiceStub(channel)
        fraud = fraud_pb2_grpc.FraudServiceStub(channel)
        for name in ("alice", "bob", "carol"):
            await wallets.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id=name, currency="USD", request_id=name)
            )
            await wallets.Deposit(
                wallet_pb2.DepositRequest(wallet_id=name, amount=10_000, request_id=f"d-{name}")
            )
        for n, (source, target) in enumerate([("alice", "bob")] * 3 + [("bob", "carol")] * 2):
            created = await transfers.CreateTransfer(
                transfer_pb2.CreateTransferRequest(
                    request_id=f"t{n}", from_wallet_id=source, to_wallet_id=target, amount=10
                )
            )
            assert created.transfer.state == COMPLETED
        for name in ("alice", "bob"):
            for n in range(2):  # each over the large-withdrawal threshold: an alert each
                await wallets.Withdraw(
                    wallet_pb2.WithdrawRequest(wallet_id=name, amount=500, request_id=f"w{name}{n}")
                )

        # ListTransfers: the token of alice's listing pages alice's listing only.
        first = await transfers.ListTransfers(
            transfer_pb2.ListTransfersRequest(wallet_id="alice", page_size=1)
        )
        token = first.next_page_token
        assert token
        rest = await transfers.ListTransfers(
            transfer_pb2.ListTransfersRequest(wallet_id="alice", page_size=5, page_token=token)
        )
        seen = [t.transfer_id for t in [*first.transfers, *rest.transfers]]
        assert len(seen) == len(set(seen)) == 3 and not rest.next_page_token
        message = await invalid(
            transfers.ListTransfers(
                transfer_pb2.ListTransfersRequest(wallet_id="bob", page_token=token)
            )
        )
        assert "(wallet_id differ)" in message
        message = await invalid(
            transfers.ListTransfers(
                transfer_pb2.ListTransfersRequest(
                    wallet_id="alice", state=COMPLETED, page_token=token
                )
            )
        )
        assert "(state differ)" in message

        # ListFraudAlerts: the same rule.
        async def both_alerted() -> bool:
            listed = await fraud.ListFraudAlerts(fraud_pb2.ListFraudAlertsRequest())
            return {"alice", "bob"} <= {a.wallet_id for a in listed.alerts}

        await wait_for(both_alerted)
        alerts = await fraud.ListFraudAlerts(
            fraud_pb2.ListFraudAlertsRequest(wallet_id="alice", page_size=1)
        )
        alert_token = alerts.next_page_token
        assert alert_token and [a.wallet_id for a in alerts.alerts] == ["alice"]
        more = await fraud.ListFraudAlerts(
            fraud_pb2.ListFraudAlertsRequest(wallet_id="alice", page_token=alert_token)
        )
        assert {a.wallet_id for a in more.alerts} == {"alice"}
        assert alerts.alerts[0].alert_id not in {a.alert_id for a in more.alerts}
        for other in ("", "bob"):
            message = await invalid(
                fraud.ListFraudAlerts(
                    fraud_pb2.ListFraudAlertsRequest(wallet_id=other, page_token=alert_token)
                )
            )
            assert "(wallet_id differ)" in message
        # A transfers token is not an alerts token, even with the same filter values.
        message = await invalid(
            fraud.ListFraudAlerts(
                fraud_pb2.ListFraudAlertsRequest(wallet_id="alice", page_token=token)
            )
        )
        assert "another listing" in message

        # ListWalletEvents: bound to its wallet.
        events = await wallets.ListWalletEvents(
            wallet_pb2.ListWalletEventsRequest(wallet_id="alice", page_size=1)
        )
        message = await invalid(
            wallets.ListWalletEvents(
                wallet_pb2.ListWalletEventsRequest(
                    wallet_id="bob", page_token=events.next_page_token
                )
            )
        )
        assert "(wallet_id differ)" in message

        # Forgeries: INVALID_ARGUMENT, never INTERNAL, whatever they carry.
        transfer_filters: page_tokens.Filters = {"state": 0, "wallet_id": ""}
        for forged in [
            "garbage!",
            "A" * 600,
            raw("transfers", transfer_filters, {"c": "2026-01-01T00:00:00", "t": "a\x00b"}),
            raw("transfers", transfer_filters, {"c": "0001-01-01T00:00:00+23:59", "t": "x"}),
            raw("transfers", transfer_filters, {"c": "not a time", "t": "x"}),
            raw("transfers", transfer_filters, {"c": {"$gt": ""}, "t": "x"}),
            raw("transfers", {"state": "0", "wallet_id": ""}, {"c": "2026-01-01", "t": "x"}),
        ]:
            await invalid(
                transfers.ListTransfers(transfer_pb2.ListTransfersRequest(page_token=forged))
            )
        for forged in [
            raw("fraud_alerts", {"wallet_id": ""}, {"c": "9999-12-31T23:59:59-23:59", "a": "x"}),
            raw("fraud_alerts", {"wallet_id": ""}, {"c": "2026-01-01", "a": "\ud800"}),
        ]:
            await invalid(
                fraud.ListFraudAlerts(fraud_pb2.ListFraudAlertsRequest(page_token=forged))
            )
        for sequence in [2**63, -1, 0, "1"]:
            forged = raw("wallet_events", {"wallet_id": "alice"}, {"s": sequence})
            await invalid(
                wallets.ListWalletEvents(
                    wallet_pb2.ListWalletEventsRequest(wallet_id="alice", page_token=forged)
                )
            )

        # Well-formed forgeries only move the start inside the caller's listing.
        start_anywhere = page_tokens.issue(
            "transfers", transfer_filters, {"c": "9999-12-31T23:59:59+00:00", "t": "zzz"}
        )
        everything = await transfers.ListTransfers(
            transfer_pb2.ListTransfersRequest(page_token=start_anywhere)
        )
        assert len(everything.transfers) == 5
        past_the_end = page_tokens.issue("wallet_events", {"wallet_id": "alice"}, {"s": 1})
        nothing = await wallets.ListWalletEvents(
            wallet_pb2.ListWalletEventsRequest(wallet_id="alice", page_token=past_the_end)
        )
        assert list(nothing.events) == [] and not nothing.next_page_token
        from_the_top = page_tokens.issue("wallet_events", {"wallet_id": "alice"}, {"s": 2**63 - 1})
        top = await wallets.ListWalletEvents(
            wallet_pb2.ListWalletEventsRequest(wallet_id="alice", page_token=from_the_top)
        )
        newest = await wallets.ListWalletEvents(
            wallet_pb2.ListWalletEventsRequest(wallet_id="alice")
        )
        assert [e.sequence for e in top.events] == [e.sequence for e in newest.events]
        assert len(top.events) >= 5  # opened, deposit, three transfers out, withdrawals
