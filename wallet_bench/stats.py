"""Latency and outcome bookkeeping for one benchmark run, per operation.

Latencies are kept as raw samples (a float per request): a run of a minute at a few
thousand requests per second is a few hundred thousand floats, cheaper than any
histogram library and exact for the percentiles we print.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted samples (0.0 when there are none)."""
    if not sorted_samples:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_samples)))
    return sorted_samples[min(rank, len(sorted_samples)) - 1]


@dataclass
class OpStats:
    """What happened to one kind of operation during the measured window."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def record(self, latency_ms: float, outcome: str) -> None:
        self.latencies_ms.append(latency_ms)
        self.outcomes[outcome] += 1

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "count": len(ordered),
            "per_second": round(len(ordered) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            "p50_ms": round(percentile(ordered, 0.50), 2),
            "p95_ms": round(percentile(ordered, 0.95), 2),
            "p99_ms": round(percentile(ordered, 0.99), 2),
            "max_ms": round(ordered[-1], 2) if ordered else 0.0,
            "outcomes": dict(sorted(self.outcomes.items())),
        }


class RunStats:
    """All operations of a run; ``total`` counts every request sent."""

    def __init__(self, names: list[str]) -> None:
        self.ops = {name: OpStats(name) for name in names}

    def record(self, name: str, latency_ms: float, outcome: str) -> None:
        self.ops[name].record(latency_ms, outcome)

    @property
    def total(self) -> int:
        return sum(op.count for op in self.ops.values())

    @property
    def errors(self) -> int:
        return sum(
            n for op in self.ops.values() for outcome, n in op.outcomes.items() if outcome != "OK"
        )

    def summary(self, elapsed_s: float) -> dict[str, dict[str, Any]]:
        return {name: op.summary(elapsed_s) for name, op in self.ops.items() if op.count}
