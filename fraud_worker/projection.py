"""The fraud consumer: ``funds_withdrawn`` entries -> rules -> alerts (+ events).

Runs inside the consumer runner's transaction (the one that writes the inbox row), so
a withdrawal is remembered, judged, and its alerts stored and queued for publication
(outbox row, same transaction) exactly once. Every other message is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncConnection

from fraud_worker import repository
from fraud_worker.rules import AlertDraft, FraudRules, Withdrawal
from wallet.v1 import events_pb2, fraud_pb2
from wallet_platform.clock import Clock, utcnow
from wallet_platform.messaging import events
from wallet_platform.messaging.bus import Delivery, PoisonMessageError

CONSUMER_NAME = "fraud"
ALERT_ROUTING_KEY = "wallet.fraud_alert_raised"
RULE_ENUMS = {
    "RAPID_WITHDRAWALS": fraud_pb2.FRAUD_RULE_RAPID_WITHDRAWALS,
    "LARGE_WITHDRAWAL": fraud_pb2.FRAUD_RULE_LARGE_WITHDRAWAL,
}
RULE_NAMES = {value: name for name, value in RULE_ENUMS.items()}


def withdrawal_of(message: Message) -> Withdrawal | None:
    """The withdrawal a message announces; None for every other message."""
    if not isinstance(message, events_pb2.FundsWithdrawn):
        return None
    event = message.event
    if not event.event_id or not event.wallet_id or not event.HasField("occurred_at"):
        raise PoisonMessageError("withdrawal without event_id, wallet_id or occurred_at")
    if event.amount < 0:
        raise PoisonMessageError(f"withdrawal with negative amount {event.amount}")
    return Withdrawal(
        occurred_at=event.occurred_at.ToDatetime(tzinfo=UTC),
        event_id=event.event_id,
        wallet_id=event.wallet_id,
        amount=event.amount,
        currency=event.currency,
    )


def alert_message(
    alert_id: str,
    wallet_id: str,
    rule: str,
    event_ids: Sequence[str],
    detail: str,
    created_at: Timestamp,
) -> fraud_pb2.FraudAlert:
    return fraud_pb2.FraudAlert(
        alert_id=alert_id,
        wallet_id=wallet_id,
        rule=RULE_ENUMS[rule],
        event_ids=list(event_ids),
        detail=detail,
        created_at=created_at,
    )


class FraudProjection:
    """``wallet_platform.messaging.consumer.Projection`` for the fraud queue."""

    consumer_name = CONSUMER_NAME
    queue = events.FRAUD_QUEUE

    def __init__(self, rules: FraudRules, clock: Clock = utcnow) -> None:
        self.rules = rules
        self._clock = clock

    async def apply(self, conn: AsyncConnection, delivery: Delivery, message: Message) -> None:
        withdrawal = withdrawal_of(message)
        if withdrawal is not None:
            await self.judge(conn, withdrawal)

    def prepare(self, message: Message) -> Withdrawal | None:
        """At delivery: the withdrawal (validated); None for every other message, which
        then costs a batch nothing but its inbox row (the rules never look at it)."""
        return withdrawal_of(message)

    async def apply_prepared(self, conn: AsyncConnection, work: Sequence[Withdrawal]) -> None:
        """A batch's new withdrawals, judged one after another in arrival order.

        Every wallet of the batch is locked first, in one statement and in wallet order
        (concurrent replicas cannot deadlock on each other's batches); each judgement
        then sees the withdrawals judged before it, as one by one.
        """
        await repository.lock_wallets(conn, sorted({w.wallet_id for w in work}))
        for withdrawal in work:
            await self.judge(conn, withdrawal, locked=True)

    async def apply_many(
        self, conn: AsyncConnection, items: Sequence[tuple[Delivery, Message]]
    ) -> None:
        """Several messages in one transaction (no inbox), judged in order."""
        withdrawals = [w for w in (withdrawal_of(m) for _, m in items) if w is not None]
        await self.apply_prepared(conn, withdrawals)

    async def judge(
        self, conn: AsyncConnection, withdrawal: Withdrawal, *, locked: bool = False
    ) -> list[AlertDraft]:
        """Remember the withdrawal, run the rules, store and announce new alerts
        (``locked``: the caller already holds the wallet's lock)."""
        if not locked:
            await repository.lock_wallet(conn, withdrawal.wallet_id)
        around = self.rules.lookaround(withdrawal.occurred_at)
        new, nearby, bursts = await repository.add_withdrawal_and_nearby(conn, withdrawal, around)
        if not new:
            return []  # judged before (redelivered without an inbox row): nothing new
        drafts = self.rules.evaluate(withdrawal, nearby, bursts)
        if not drafts:
            return []
        now = self._clock()
        stamp = Timestamp()
        stamp.FromDatetime(now)
        for draft in drafts:
            alert = alert_message(
                draft.alert_id, draft.wallet_id, draft.rule, draft.event_ids, draft.detail, stamp
            )
            row = events.outbox_row(
                draft.alert_id, ALERT_ROUTING_KEY, events_pb2.FraudAlertRaised(alert=alert), now
            )
            await repository.add_alert(conn, draft, now, row)
        return drafts
