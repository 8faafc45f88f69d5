"""Unit tests of WalletService's pure rules (no database, no gRPC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from wallet.v1 import wallet_pb2
from wallet_platform import page_tokens
from wallet_platform.errors import (
    BalanceOverflowError,
    CurrencyMismatchError,
    InsufficientFundsError,
    InvalidArgumentError,
    WalletFrozenError,
)
from wallet_service import domain
from wallet_service.domain import INT64_MAX, Movement
from wallet_service.messages import event_to_pb, wallet_to_pb
from wallet_service.service import WalletService

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def wallet(balance: int = 100, status: str = domain.ACTIVE, currency: str = "USD"):
    return domain.Wallet("w1", currency, balance, status, 3, T0, T0)


@pytest.mark.parametrize(
    ("movement", "expected"),
    [
        (Movement.DEPOSIT, 130),
        (Movement.WITHDRAW, 70),
        (Movement.TRANSFER_DEBIT, 70),
        (Movement.TRANSFER_CREDIT, 130),
        (Movement.TRANSFER_REFUND, 130),
    ],
)
def test_movements_change_the_balance_in_their_direction(movement, expected):
    assert domain.plan_movement(wallet(), movement, 30) == expected


@pytest.mark.parametrize("movement", [Movement.WITHDRAW, Movement.TRANSFER_DEBIT])
def test_debits_never_go_below_zero(movement):
    assert domain.plan_movement(wallet(100), movement, 100) == 0
    with pytest.raises(InsufficientFundsError):
        domain.plan_movement(wallet(100), movement, 101)


@pytest.mark.parametrize(
    "movement", [Movement.DEPOSIT, Movement.TRANSFER_CREDIT, Movement.TRANSFER_REFUND]
)
def test_credits_that_would_overflow_int64_are_rejected(movement):
    assert domain.plan_movement(wallet(INT64_MAX - 5), movement, 5) == INT64_MAX
    with pytest.raises(BalanceOverflowError):
        domain.plan_movement(wallet(INT64_MAX - 5), movement, 6)
    with pytest.raises(BalanceOverflowError):
        domain.plan_movement(wallet(1), movement, INT64_MAX)


@pytest.mark.parametrize(
    "movement",
    [Movement.DEPOSIT, Movement.WITHDRAW, Movement.TRANSFER_DEBIT, Movement.TRANSFER_CREDIT],
)
def test_a_frozen_wallet_accepts_no_debit_and_no_credit(movement):
    with pytest.raises(WalletFrozenError):
        domain.plan_movement(wallet(status=domain.FROZEN), movement, 1)


def test_a_refund_reaches_a_frozen_wallet():
    assert domain.plan_movement(wallet(status=domain.FROZEN), Movement.TRANSFER_REFUND, 5) == 105


def test_currency_must_match_when_given_and_is_checked_first():
    frozen_eur = wallet(balance=0, status=domain.FROZEN, currency="EUR")
    with pytest.raises(CurrencyMismatchError):
        domain.plan_movement(frozen_eur, Movement.TRANSFER_DEBIT, 5, "USD")
    assert domain.plan_movement(wallet(), Movement.TRANSFER_CREDIT, 5, "USD") == 105
    assert domain.plan_movement(wallet(), Movement.TRANSFER_CREDIT, 5, "") == 105


def test_frozen_is_reported_before_insufficient_funds():
    with pytest.raises(WalletFrozenError):
        domain.plan_movement(wallet(0, status=domain.FROZEN), Movement.WITHDRAW, 5)


def test_balance_bounds_never_overflow():
    assert domain.balance_bounds(Movement.WITHDRAW, INT64_MAX) == (INT64_MAX, INT64_MAX)
    assert domain.balance_bounds(Movement.DEPOSIT, INT64_MAX) == (0, 0)


def test_freeze_and_unfreeze_are_idempotent_without_an_event():
    assert domain.plan_status_change(wallet(), freeze=True) == domain.WALLET_FROZEN
    assert domain.plan_status_change(wallet(status=domain.FROZEN), freeze=True) is None
    assert domain.plan_status_change(wallet(status=domain.FROZEN), freeze=False) == (
        domain.WALLET_UNFROZEN
    )
    assert domain.plan_status_change(wallet(), freeze=False) is None


def test_status_after_each_event_type():
    assert domain.status_after(domain.WALLET_FROZEN, domain.ACTIVE) == domain.FROZEN
    assert domain.status_after(domain.WALLET_UNFROZEN, domain.FROZEN) == domain.ACTIVE
    assert domain.status_after(domain.FUNDS_DEPOSITED, domain.FROZEN) == domain.FROZEN


def test_state_after_an_event_is_the_wallet_at_that_point():
    event = domain.WalletEvent(
        "e", "w1", 2, domain.FUNDS_DEPOSITED, 40, 40, "USD", None, "r", None, T0 + timedelta(1)
    )
    past = domain.state_after(wallet(500), event, domain.ACTIVE)
    assert (past.balance, past.version, past.updated_at) == (40, 2, T0 + timedelta(1))
    assert past.created_at == T0


def test_event_times_never_go_back():
    assert domain.next_timestamp(T0, T0 + timedelta(seconds=1)) == T0 + timedelta(seconds=1)
    assert domain.next_timestamp(T0 + timedelta(seconds=2), T0) == T0 + timedelta(seconds=2)


def test_fingerprint_covers_method_and_every_parameter():
    base = domain.fingerprint("Deposit", "w1", 5, "", "")
    assert base == domain.fingerprint("Deposit", "w1", 5, "", "")
    assert len(base) == 64
    assert base != domain.fingerprint("Withdraw", "w1", 5, "", "")
    assert base != domain.fingerprint("Deposit", "w1", 6, "", "")
    assert base != domain.fingerprint("Deposit", "w2", 5, "", "")
    assert base != domain.fingerprint("Deposit", "w1", 5, "", "USD")


def test_protobuf_conversion_keeps_every_field():
    pb = wallet_to_pb(wallet(status=domain.FROZEN))
    assert pb.status == wallet_pb2.WALLET_STATUS_FROZEN
    assert pb.created_at.ToDatetime(tzinfo=UTC) == T0
    event = domain.WalletEvent(
        "e1", "w1", 4, domain.TRANSFER_REFUNDED, 7, 107, "USD", "t1", "t1:refund", "a1", T0
    )
    event_pb = event_to_pb(event)
    assert event_pb.type == wallet_pb2.WALLET_EVENT_TYPE_TRANSFER_REFUNDED
    assert (event_pb.transfer_id, event_pb.audit_id, event_pb.balance_after) == ("t1", "a1", 107)


@pytest.mark.parametrize(
    "token",
    [
        page_tokens.issue("wallet_events", {"wallet_id": "other"}, {"s": 5}),
        page_tokens.issue("transfers", {"wallet_id": "w1"}, {"s": 5}),
        page_tokens.issue("wallet_events", {"wallet_id": "w1"}, {"s": 0}),
        page_tokens.issue("wallet_events", {"wallet_id": "w1"}, {"s": "5"}),
        # A bool is an int to Python (and to the type checker), not to redeem.
        page_tokens.issue("wallet_events", {"wallet_id": "w1"}, {"s": True}),
        page_tokens.issue("wallet_events", {"wallet_id": "w1"}, {}),
        "not-a-token!!",
        "x" * 600,
    ],
)
def test_page_tokens_we_did_not_issue_are_invalid(token):
    with pytest.raises(InvalidArgumentError) as raised:
        WalletService._decode_token("w1", token)
    assert raised.value.field == "page_token"


def test_page_token_round_trip():
    token = page_tokens.issue("wallet_events", {"wallet_id": "w1"}, {"s": 7})
    assert WalletService._decode_token("w1", token) == 7
    assert WalletService._decode_token("w1", "") is None
