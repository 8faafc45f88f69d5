"""The one backoff policy of the platform: exponential growth, full jitter, a cap.

Every loop that waits after a failure (the outbox relay, the consumers, bus reconnects,
redeliveries, the audit writer, saga step retries, ``walletctl``'s watch) asks a
:class:`Backoff` how long to wait before try number ``n``: a random pause between 0
and ``min(cap, initial * multiplier ** (n - 1))`` ("full jitter"). Why random and not
the ceiling itself: replicas (and the tasks of one process) that failed together, at
the start of one outage, would otherwise come back together, in lockstep, at every
step of the backoff, and hit the recovering dependency as one wave each time. Spreading
each wait over the whole interval breaks the waves up; the cap bounds how long a loop
can sleep through a dependency that is already back.

Named presets below say what each use waits for; change a use's pacing there (saga
step retries build theirs from ``WALLET_SAGA_RETRY_MAX_MS``). The client package
(``clients/python``) installs without this one and keeps its own copy of the same rule
(``wallet_client.retry``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# Past this many failures the ceiling is the cap anyway (and a float power would overflow).
_MAX_EXPONENT = 64
_RANDOM = random.Random()


@dataclass(frozen=True)
class Backoff:
    """Waits (seconds) before retry number 1, 2, 3... of one failing operation."""

    initial: float  # the ceiling of the first wait
    cap: float  # no wait is longer (it wins over ``initial``)
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.cap < 0:
            raise ValueError("initial and cap must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` failures in a row (1 = the first)."""
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return min(self.cap, self.initial * self.multiplier**exponent)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """A wait drawn uniformly from ``[0, ceiling(failures)]``."""
        return (rng or _RANDOM).uniform(0.0, self.ceiling(failures))

    def tenacity_wait(self, retry_state: Any) -> float:
        """This policy as a tenacity ``wait=`` (``attempt_number`` failures so far)."""
        return self.delay(int(retry_state.attempt_number))


# --- the presets: one per use ----------------------------------------------------------------

#: The outbox relay after a failed round (broker or database down).
RELAY_FAILURE = Backoff(initial=0.1, cap=2.0)
#: Opening a RabbitMQ connection again while the broker is unreachable.
BUS_RECONNECT = Backoff(initial=1.0, cap=5.0)
#: A delivery whose handler failed, before it is delivered again (both buses).
REDELIVERY = Backoff(initial=0.1, cap=2.0)
#: The in-process bus's consume loop after it failed (its database is down).
BUS_POLL_FAILURE = Backoff(initial=0.1, cap=2.0)
#: A consumer waiting for an unreachable database (retried until it is back).
DATABASE_UNREACHABLE = Backoff(initial=0.1, cap=5.0)
#: A consumer's unit of work that met lock contention, a deadlock or a timeout.
DATABASE_CONTENTION = Backoff(initial=0.05, cap=5.0)
#: The audit writer after a failed insert.
AUDIT_WRITE = Backoff(initial=0.2, cap=2.0)
#: ``walletctl``'s watch stream, reopened after it ended or failed.
WATCH_RECONNECT = Backoff(initial=0.2, cap=5.0)
