"""wallet_client.WalletClient against a real stack (SQLite and PostgreSQL).

The stack is ``wallet-stack``'s composition in this process (tests.integration.
walletctl_harness.running_stack); the client is the blocking client a service would
use, run on a worker thread. Covers the methods, the typed errors with their ErrorInfo
metadata, one idempotency key reused across retries (a deadline hit after the commit,
then the replay), what is never retried, TLS with a client certificate, and tokens.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

import wallet_client as wc
from tests.integration.test_walletctl_security import make_pki
from tests.integration.walletctl_harness import running_stack
from wallet.v1 import transfer_pb2, wallet_pb2
from wallet_platform import failpoints

T = TypeVar("T")
FAST_RETRY = wc.RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


async def in_thread(work: Callable[[], T]) -> T:
    return await asyncio.to_thread(work)


def _raises(error_class: type[wc.WalletError], call: Callable[[], object]) -> wc.WalletError:
    with pytest.raises(error_class) as raised:
        call()
    return raised.value


async def test_methods_move_money_and_replay_by_key(database_url: str):
    async with running_stack(database_url) as running:

        def scenario() -> None:
            with wc.WalletClient(running.target, timeout=10) as client:
                created = client.create_wallet("USD", wallet_id="alice", request_id="open-a")
                assert created.wallet.wallet_id == "alice" and not created.replayed
                again = client.create_wallet("USD", wallet_id="alice", request_id="open-a")
                assert again.replayed
                client.create_wallet("USD", wallet_id="bob")

                first = client.deposit("alice", 10_000, request_id="order-1")
                repeat = client.deposit("alice", 10_000, request_id="order-1")
                assert (first.replayed, repeat.replayed) == (False, True)
                assert repeat.wallet.balance == 10_000
                # Without a key the client makes one: a valid, fresh request_id per call.
                generated = client.deposit("alice", 500)
                uuid.UUID(generated.event.request_id)
                other = client.deposit("alice", 500)
                assert other.event.request_id != generated.event.request_id
                assert other.wallet.balance == 11_000

                client.withdraw("alice", 1_000)
                moved = client.create_transfer("alice", "bob", 2_500).transfer
                assert moved.state == transfer_pb2.TRANSFER_STATE_COMPLETED
                uuid.UUID(moved.request_id)
                assert client.get_transfer(moved.transfer_id).transfer.amount == 2_500
                listed = client.list_transfers(wallet_id="bob").transfers
                assert [t.transfer_id for t in listed] == [moved.transfer_id]
                assert client.get_transfer_summary().unfinished == 0

                assert client.get_wallet("alice").wallet.balance == 7_500
                assert client.get_wallet("alice", as_of_sequence=2).wallet.balance == 10_000
                events = client.list_wallet_events("alice", page_size=2)
                assert len(events.events) == 2 and events.next_page_token
                assert events.events[0].type == wallet_pb2.WALLET_EVENT_TYPE_TRANSFER_DEBITED

                client.freeze_wallet("bob")
                frozen = _raises(wc.WalletFrozenError, lambda: client.withdraw("bob", 1))
                assert frozen.code == grpc.StatusCode.FAILED_PRECONDITION
                client.unfreeze_wallet("bob")
                assert client.withdraw("bob", 1).wallet.balance == 2_499

        await in_thread(scenario)


async def test_errors_are_typed_with_reason_code_and_metadata(database_url: str):
    async with running_stack(database_url) as running:

        def scenario() -> None:
            with wc.WalletClient(running.target, timeout=10) as client:
                client.create_wallet("USD", wallet_id="alice")
                client.create_wallet("EUR", wallet_id="euro")

                poor = _raises(wc.InsufficientFundsError, lambda: client.withdraw("alice", 5))
                assert isinstance(poor, wc.FailedPreconditionError)
                assert (poor.reason, poor.code) == (
                    "INSUFFICIENT_FUNDS",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
                assert poor.metadata == {"field": "amount"} and poor.domain == "wallet.v1"
                assert poor.attempts == 1 and poor.request_id and "alice" in poor.message

                missing = _raises(wc.WalletNotFoundError, lambda: client.get_wallet("nobody"))
                assert missing.code == grpc.StatusCode.NOT_FOUND
                assert missing.metadata["field"] == "wallet_id" and missing.request_id is None

                client.deposit("alice", 100, request_id="k-1")
                reused = _raises(
                    wc.IdempotencyKeyReusedError,
                    lambda: client.deposit("alice", 999, request_id="k-1"),
                )
                assert (reused.reason, reused.request_id) == ("REQUEST_ID_REUSED", "k-1")

                bad = _raises(wc.InvalidArgumentError, lambda: client.deposit("alice", -1))
                assert bad.metadata == {"field": "amount"}
                hostile = "x" * 200 + "\x00"
                bad_key = _raises(
                    wc.InvalidArgumentError, lambda: client.deposit("alice", 1, request_id=hostile)
                )
                assert bad_key.metadata == {"field": "request_id"}

                taken = _raises(
                    wc.AlreadyExistsError, lambda: client.create_wallet("USD", wallet_id="euro")
                )
                assert type(taken) is wc.WalletAlreadyExistsError
                _raises(wc.TransferNotFoundError, lambda: client.get_transfer("no-such-transfer"))
                _raises(wc.WalletStatsNotFoundError, lambda: client.get_wallet_stats("nobody"))
                mismatch = _raises(
                    wc.CurrencyMismatchError, lambda: client.create_transfer("alice", "euro", 10)
                )
                assert mismatch.code == grpc.StatusCode.FAILED_PRECONDITION
                # Nothing moved on any refusal.
                assert client.get_wallet("alice").wallet.balance == 100

        await in_thread(scenario)


async def test_a_deadline_after_the_commit_is_retried_with_the_same_key(tmp_path: Path):
    """The first attempt commits, then outlives its deadline; the retry is the replay."""
    database_url = f"sqlite:///{tmp_path / 'wallet.db'}"
    try:
        async with running_stack(database_url, failpoints="wallet.after_commit=sleep(1500)") as s:

            def scenario() -> None:
                policy = wc.RetryPolicy(max_attempts=3, initial_backoff=0.01, total_timeout=20)
                with wc.WalletClient(s.target, timeout=0.5, retry=policy) as client:
                    client.create_wallet("USD", wallet_id="alice")
                    answer = client.deposit("alice", 700)
                    assert answer.replayed, "the retry must be a replay of the first attempt"
                    assert answer.wallet.balance == 700
                    history = client.list_wallet_events("alice").events
                    deposits = [e for e in history if e.amount == 700]
                    assert len(deposits) == 1 and deposits[0].request_id

            await in_thread(scenario)
    finally:
        failpoints.configure("")


def test_only_reads_and_keyed_writes_are_retried(unused_tcp_port: int):
    """Against a port where nothing listens: every call is UNAVAILABLE."""
    target = f"127.0.0.1:{unused_tcp_port}"
    with wc.WalletClient(target, timeout=1, retry=FAST_RETRY) as client:
        read = _raises(wc.UnavailableError, lambda: client.get_wallet("alice"))
        assert read.attempts == FAST_RETRY.max_attempts and read.request_id is None

        keyed = _raises(wc.UnavailableError, lambda: client.deposit("alice", 1))
        assert keyed.attempts == FAST_RETRY.max_attempts
        uuid.UUID(keyed.request_id or "")  # the key every attempt carried: retry later with it

        # A write whose message has no request_id field is sent once.
        summary = transfer_pb2.GetTransferSummaryRequest()
        unkeyed = _raises(
            wc.UnavailableError, lambda: client.call(client.transfers.GetTransferSummary, summary)
        )
        assert unkeyed.attempts == 1 and unkeyed.request_id is None
        as_read = _raises(
            wc.UnavailableError,
            lambda: client.call(client.transfers.GetTransferSummary, summary, read=True),
        )
        assert as_read.attempts == FAST_RETRY.max_attempts


async def test_tls_with_client_certificate_and_tokens(tmp_path: Path):
    pki = make_pki(tmp_path)
    tls = wc.TlsConfig.from_files(pki["ca"], pki["client_cert"], pki["client_key"])
    async with running_stack(
        f"sqlite:///{tmp_path / 'wallet.db'}",
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
        auth_tokens="t-read=reader@auditor;t-write=writer@teller",
    ) as running:

        def scenario() -> None:
            with wc.WalletClient(running.target, tls=tls, token="t-write") as writer:
                writer.create_wallet("USD", wallet_id="alice")
                assert writer.deposit("alice", 40).wallet.balance == 40
            with wc.WalletClient(running.target, tls=tls, token="t-read") as reader:
                assert reader.get_wallet("alice").wallet.balance == 40
                denied = _raises(wc.PermissionDeniedError, lambda: reader.deposit("alice", 1))
                assert denied.reason == "PERMISSION_DENIED" and denied.attempts == 1
            with wc.WalletClient(running.target, tls=tls, token="forged") as stranger:
                _raises(wc.UnauthenticatedError, lambda: stranger.get_wallet("alice"))
            with wc.WalletClient(running.target, tls=tls) as anonymous:
                _raises(wc.UnauthenticatedError, lambda: anonymous.get_wallet("alice"))
            # Without the client certificate, or in plaintext, there is no connection.
            no_cert = wc.TlsConfig.from_files(pki["ca"])
            policy = wc.RetryPolicy(max_attempts=2, initial_backoff=0.01, total_timeout=5)
            for refused in (
                wc.WalletClient(running.target, tls=no_cert, token="t-read", retry=policy),
                wc.WalletClient(running.target, token="t-read", retry=policy),
            ):
                with refused:
                    _raises(wc.UnavailableError, functools.partial(refused.get_wallet, "alice"))

        await in_thread(scenario)


def test_bad_client_configuration_is_refused_before_any_call():
    with pytest.raises(ValueError):
        wc.TlsConfig(client_cert=b"cert only")
    with pytest.raises(ValueError):
        wc.WalletClient("127.0.0.1:1", token="two\nlines")
    with pytest.raises(ValueError):
        wc.WalletClient("127.0.0.1:1", timeout=0)
