"""Fraud rules, pure: given a withdrawal and what is known around it, which alerts.

No I/O and no wall clock: the rules look at EVENT time (``occurred_at`` from the log)
only, so a consumer that lags, retries or receives a wallet's events out of order
reaches the same verdicts. The store hands in the neighbourhood of the new
withdrawal (:meth:`FraudRules.lookaround`) and stores what comes back.

Definitions (W = ``fraud_rapid_window_seconds``, N = ``fraud_rapid_count``):

- A *withdrawal* is a ``funds_withdrawn`` log entry. Transfer debits are not
  withdrawals (money stays on the platform; the contract's rule speaks of withdrawals).
- LARGE_WITHDRAWAL: one withdrawal with ``amount >= fraud_large_withdrawal``; one alert
  per such withdrawal.
- N withdrawals are *rapid* when the last is less than W after the first
  (``last - first < W``): they fit in a half-open window ``[first, first + W)``.
  Withdrawals exactly W apart are not within one window.
- RAPID_WITHDRAWALS: an alert is raised for a set of N rapid withdrawals; its *burst*
  is every withdrawal less than W away (either side) from the first withdrawal of the
  set, i.e. event times in ``(start - W, start + W)``. A withdrawal in the burst of an
  existing alert never counts towards a new alert (the 4th, 5th... of a burst raise
  nothing); a new alert needs N rapid withdrawals none of which lies in an existing
  burst. A steady stream therefore raises about one alert per window, not one per
  withdrawal. Looking backwards too (``start - W``) keeps late arrivals of the same
  burst (out of order, after retries) from raising a second alert.
- Among several qualifying sets the earliest (by event time, then event id) that
  includes the new withdrawal is chosen, which in time order is the set the N-th
  withdrawal completes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

RAPID_WITHDRAWALS = "RAPID_WITHDRAWALS"
LARGE_WITHDRAWAL = "LARGE_WITHDRAWAL"
RULES = (RAPID_WITHDRAWALS, LARGE_WITHDRAWAL)

# Alert ids are derived from (rule, triggering event): re-evaluating the same event can
# only ever produce the same alert id, so a replay cannot create a second alert.
ALERT_NAMESPACE = uuid.UUID("5b0d6c2e-3f7a-4d0e-9a61-0c9f5e8a2b14")


@dataclass(frozen=True, order=True)
class Withdrawal:
    """A ``funds_withdrawn`` entry, ordered by event time then event id."""

    occurred_at: datetime
    event_id: str
    wallet_id: str = field(compare=False)
    amount: int = field(compare=False)
    currency: str = field(compare=False, default="")


@dataclass(frozen=True)
class Burst:
    """An existing RAPID_WITHDRAWALS alert, by the event time of its first withdrawal."""

    start: datetime

    def claims(self, occurred_at: datetime, window: timedelta) -> bool:
        return self.start - window < occurred_at < self.start + window


@dataclass(frozen=True)
class AlertDraft:
    """An alert the rules decided on (the projection gives it its creation time)."""

    rule: str
    wallet_id: str
    event_ids: tuple[str, ...]
    detail: str
    trigger_event_id: str
    window_start: datetime | None = None
    window_end: datetime | None = None

    @property
    def alert_id(self) -> str:
        return str(uuid.uuid5(ALERT_NAMESPACE, f"{self.rule}:{self.trigger_event_id}"))


@dataclass(frozen=True)
class Lookaround:
    """What the rapid rule must see around a withdrawal at time t (event time).

    Candidate partners lie in ``(t - W, t + W)``; a partner at ``t - W + e`` may be
    claimed by a burst starting up to W before it, hence bursts in ``(t - 2W, t + 2W)``.
    """

    withdrawals_from: datetime
    withdrawals_to: datetime
    bursts_from: datetime
    bursts_to: datetime


@dataclass(frozen=True)
class FraudRules:
    """The two rules with their thresholds. A count or window < 1 disables RAPID."""

    large_withdrawal: int
    rapid_count: int
    rapid_window: timedelta

    @classmethod
    def from_settings(cls, settings: Any) -> FraudRules:
        return cls(
            large_withdrawal=settings.fraud_large_withdrawal,
            rapid_count=settings.fraud_rapid_count,
            rapid_window=timedelta(seconds=settings.fraud_rapid_window_seconds),
        )

    @property
    def rapid_enabled(self) -> bool:
        return self.rapid_count >= 1 and self.rapid_window > timedelta(0)

    def lookaround(self, occurred_at: datetime) -> Lookaround:
        window = self.rapid_window
        return Lookaround(
            withdrawals_from=occurred_at - window,
            withdrawals_to=occurred_at + window,
            bursts_from=occurred_at - 2 * window,
            bursts_to=occurred_at + 2 * window,
        )

    def evaluate(
        self,
        withdrawal: Withdrawal,
        nearby: Iterable[Withdrawal],
        bursts: Iterable[Burst],
    ) -> list[AlertDraft]:
        """Every alert ``withdrawal`` raises, given the wallet's other withdrawals near it
        and the bursts of its existing RAPID alerts (extra ones are simply ignored)."""
        alerts: list[AlertDraft] = []
        large = self.check_large(withdrawal)
        if large is not None:
            alerts.append(large)
        rapid = self.check_rapid(withdrawal, nearby, bursts)
        if rapid is not None:
            alerts.append(rapid)
        return alerts

    def check_large(self, withdrawal: Withdrawal) -> AlertDraft | None:
        if withdrawal.amount < self.large_withdrawal:
            return None
        return AlertDraft(
            rule=LARGE_WITHDRAWAL,
            wallet_id=withdrawal.wallet_id,
            event_ids=(withdrawal.event_id,),
            detail=(
                f"withdrawal of {withdrawal.amount} minor units {withdrawal.currency}".rstrip()
                + f" at or above the threshold of {self.large_withdrawal}"
            ),
            trigger_event_id=withdrawal.event_id,
            window_start=withdrawal.occurred_at,
            window_end=withdrawal.occurred_at,
        )

    def check_rapid(
        self,
        withdrawal: Withdrawal,
        nearby: Iterable[Withdrawal],
        bursts: Iterable[Burst],
    ) -> AlertDraft | None:
        if not self.rapid_enabled:
            return None
        window = self.rapid_window
        burst_list = list(bursts)

        def unclaimed(item: Withdrawal) -> bool:
            return not any(b.claims(item.occurred_at, window) for b in burst_list)

        if not unclaimed(withdrawal):
            return None
        pool = {withdrawal.event_id: withdrawal}
        for item in nearby:
            if (
                item.wallet_id == withdrawal.wallet_id
                and abs(item.occurred_at - withdrawal.occurred_at) < window
                and unclaimed(item)
            ):
                pool.setdefault(item.event_id, item)
        ordered = sorted(pool.values())
        count = self.rapid_count
        position = ordered.index(withdrawal)
        first_start = max(0, position - count + 1)
        last_start = min(position, len(ordered) - count)
        for start in range(first_start, last_start + 1):
            group = ordered[start : start + count]
            if group[-1].occurred_at - group[0].occurred_at < window:
                return self._rapid_alert(withdrawal, group)
        return None

    def _rapid_alert(self, trigger: Withdrawal, group: list[Withdrawal]) -> AlertDraft:
        first, last = group[0].occurred_at, group[-1].occurred_at
        seconds = self.rapid_window.total_seconds()
        total = sum(item.amount for item in group)
        return AlertDraft(
            rule=RAPID_WITHDRAWALS,
            wallet_id=trigger.wallet_id,
            event_ids=tuple(item.event_id for item in group),
            detail=(
                f"{len(group)} withdrawals within {seconds:g}s of event time "
                f"({first.isoformat()} .. {last.isoformat()}), {total} minor units in total"
            ),
            trigger_event_id=trigger.event_id,
            window_start=first,
            window_end=first + self.rapid_window,
        )


def replay(rules: FraudRules, arrivals: Iterable[Withdrawal]) -> list[AlertDraft]:
    """All alerts for withdrawals arriving in this order (the in-memory twin of the
    projection loop; used by tests and to explain the rules)."""
    seen: list[Withdrawal] = []
    bursts: list[Burst] = []
    alerts: list[AlertDraft] = []
    for withdrawal in arrivals:
        if any(item.event_id == withdrawal.event_id for item in seen):
            continue
        drafts = rules.evaluate(withdrawal, seen, bursts)
        seen.append(withdrawal)
        for draft in drafts:
            alerts.append(draft)
            if draft.rule == RAPID_WITHDRAWALS and draft.window_start is not None:
                bursts.append(Burst(draft.window_start))
    return alerts
