"""The suite's targets: throughput as a ratio to the pgbench baselines (the same work
done by bare SQL on the same database), and bounds on latency, consumer lag, drain
time and memory; plus every run's invariants.
"""

from __future__ import annotations

from typing import TypedDict

from wallet_bench import baseline
from wallet_bench.run import RunReport

# Throughput: at least this share of the pgbench baseline's transactions per second.
DEPOSIT_RATIO = 0.3
TRANSFER_RATIO = 0.3
# Bounds: p99 latency at concurrency 32, analytics lag p99, drain after the load, RSS.
DEPOSIT_P99_MS = 50.0
TRANSFER_P99_MS = 150.0
LAG_S = 1.0
DRAIN_S = 5.0
RSS_MB = 200.0


class Verdict(TypedDict):
    """One target: what was measured, the bound and whether it was met."""

    target: str
    value: float
    bound: float
    op: str
    met: bool
    note: str


def verdicts(
    baselines: dict[str, baseline.PgbenchResult],
    runs: dict[str, RunReport],
    memory: dict[str, list[float]],
) -> list[Verdict]:
    """Each target: measured value, the bound, met or not."""
    rows: list[Verdict] = []

    def add(name: str, value: float, bound: float, higher_is_better: bool, note: str) -> None:
        met = value >= bound if higher_is_better else value < bound
        rows.append(
            {
                "target": name,
                "value": round(value, 3),
                "bound": bound,
                "op": ">=" if higher_is_better else "<",
                "met": met,
                "note": note,
            }
        )

    deposit = runs.get("deposit")
    if deposit is not None:
        ops = deposit.load["operations"].get("deposit", {})
        rate = ops.get("per_second", 0.0)
        if "deposit" in baselines:
            tps = baselines["deposit"].tps
            add("deposit ratio", rate / tps, DEPOSIT_RATIO, True, f"{rate:,.0f}/s vs {tps:,.0f}")
        add("deposit p99 ms", ops.get("p99_ms", 0.0), DEPOSIT_P99_MS, False, "concurrency 32")
        analytics_lag = [v for k, v in deposit.lag.items() if "analytics" in k]
        if analytics_lag:
            lag = analytics_lag[0]
            add(
                "analytics lag p99 s",
                lag["p99_s"],
                LAG_S,
                False,
                f"max {lag['max_s']:.3f}s, event time -> applied",
            )
        if deposit.drain:
            add("drain s", deposit.drain["seconds"], DRAIN_S, False, "after the deposit run")
    transfer = runs.get("transfer")
    if transfer is not None:
        ops = transfer.load["operations"].get("transfer", {})
        rate = transfer.load.get("transfers_completed_per_second", 0.0)
        if "transfer" in baselines:
            tps = baselines["transfer"].tps
            add(
                "transfer ratio",
                rate / tps,
                TRANSFER_RATIO,
                True,
                f"{rate:,.0f} completed/s vs {tps:,.0f}",
            )
        add("transfer p99 ms", ops.get("p99_ms", 0.0), TRANSFER_P99_MS, False, "concurrency 32")
    if memory:
        worst_name, worst = max(
            ((n, max(v)) for n, v in memory.items() if v), key=lambda item: item[1]
        )
        add("max RSS MB", worst, RSS_MB, False, f"largest: {worst_name}")
    for name, report in runs.items():
        failed = [c.name for c in report.checks if not c.ok]
        rows.append(
            {
                "target": f"invariants ({name})",
                "value": 0 if failed else 1,
                "bound": 1,
                "op": "==",
                "met": not failed,
                "note": ", ".join(failed) or "all held",
            }
        )
    return rows


def render_verdicts(rows: list[Verdict]) -> str:
    lines = ["", "targets (throughput as a ratio to the pgbench baselines; bounds):"]
    for row in rows:
        mark = "MET " if row["met"] else "MISS"
        lines.append(
            f"  [{mark}] {row['target']:<22} {row['value']:>10} {row['op']} {row['bound']:<6} "
            f"{row['note']}"
        )
    return "\n".join(lines)
