"""The fraud consumer's edge: ``funds_withdrawn`` entries -> rules -> alerts (+ events).

Translates each delivery into the rules' :class:`Withdrawal` (every other message
changes nothing but its inbox row), then, inside the unit of work the consumer runner
owns (the one that writes the inbox rows), remembers each new withdrawal, judges it
and stores its alerts with their outbox rows: a withdrawal is judged and its alerts
published exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp

from fraud_worker.rules import AlertDraft, FraudRules, Withdrawal
from fraud_worker.store import FraudStore, FraudUnitOfWork
from wallet.v1 import events_pb2, fraud_pb2
from wallet_events import types
from wallet_platform.clock import Clock, utcnow
from wallet_platform.messaging.bus import Delivery
from wallet_platform.messaging.consumer import Recorded, Translated, record_then_apply
from wallet_platform.messaging.events import (
    decode_delivery,
    routing_key,
    trace_ids,
    wallet_event_of,
)
from wallet_platform.messaging.outbox.rows import outbox_row
from wallet_platform.topology import FRAUD_QUEUE

CONSUMER_NAME = "fraud"  # a key of wallet_platform.topology.CONSUMER_QUEUES
ALERT_ROUTING_KEY = routing_key(types.FRAUD_ALERT_RAISED)
RULE_ENUMS = {
    "RAPID_WITHDRAWALS": fraud_pb2.FRAUD_RULE_RAPID_WITHDRAWALS,
    "LARGE_WITHDRAWAL": fraud_pb2.FRAUD_RULE_LARGE_WITHDRAWAL,
}
RULE_NAMES = {value: name for name, value in RULE_ENUMS.items()}


def withdrawal_of(delivery: Delivery) -> Translated[Withdrawal]:
    """The withdrawal a delivery announces (None for every other message)."""
    message = decode_delivery(delivery)
    entry = wallet_event_of(message)
    if entry is None or entry[0] != types.FUNDS_WITHDRAWN:
        return Translated(None)
    _, event = entry
    withdrawal = Withdrawal(
        occurred_at=event.occurred_at.ToDatetime(tzinfo=UTC),
        event_id=event.event_id,
        wallet_id=event.wallet_id,
        amount=event.amount,
        currency=event.currency,
    )
    return Translated(withdrawal, trace_ids(message))


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
    queue = FRAUD_QUEUE

    def __init__(self, store: FraudStore, rules: FraudRules, clock: Clock = utcnow) -> None:
        self.store = store
        self.rules = rules
        self._clock = clock

    def translate(self, delivery: Delivery) -> Translated[Withdrawal]:
        return withdrawal_of(delivery)

    def unit_of_work(self) -> FraudUnitOfWork:
        return self.store.unit_of_work()

    async def record_and_apply(
        self,
        uow: FraudUnitOfWork,
        consumer: str,
        message_ids: Sequence[str],
        work: Sequence[Withdrawal | None],
    ) -> Recorded:
        return await record_then_apply(uow, consumer, message_ids, work, self.apply)

    async def apply(self, uow: FraudUnitOfWork, withdrawals: Sequence[Withdrawal]) -> None:
        """A batch's new withdrawals, judged one after another in arrival order.

        Every wallet of the batch is locked first, in one statement and in wallet order
        (concurrent replicas cannot deadlock on each other's batches); each judgement
        then sees the withdrawals judged before it, as one by one.
        """
        await uow.lock_wallets(sorted({w.wallet_id for w in withdrawals}))
        for withdrawal in withdrawals:
            await self.judge(uow, withdrawal)

    async def judge(self, uow: FraudUnitOfWork, withdrawal: Withdrawal) -> list[AlertDraft]:
        """Remember the withdrawal, run the rules, store and announce new alerts (the
        caller holds the wallet's lock)."""
        seen = await uow.remember(withdrawal, self.rules.lookaround(withdrawal.occurred_at))
        if not seen.new:
            return []  # judged before (redelivered without an inbox row): nothing new
        drafts = self.rules.evaluate(withdrawal, seen.withdrawals, seen.bursts)
        if not drafts:
            return []
        now = self._clock()
        stamp = Timestamp()
        stamp.FromDatetime(now)
        for draft in drafts:
            alert = alert_message(
                draft.alert_id, draft.wallet_id, draft.rule, draft.event_ids, draft.detail, stamp
            )
            row = outbox_row(
                draft.alert_id, ALERT_ROUTING_KEY, events_pb2.FraudAlertRaised(alert=alert), now
            )
            await uow.add_alert(draft, now, row)
        return drafts
