"""One benchmark run end to end: set up, load, settle, drain, check, report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from wallet_bench.api_checks import api_stats_mismatches, check_api, wait_for_drain
from wallet_bench.checks import Check, LogReader, check_log, verdict
from wallet_bench.client import DEFAULT_CONNECTIONS, Clients, Targets
from wallet_bench.ledger import Ledger, LoadConfig
from wallet_bench.load import LoadGenerator
from wallet_platform.config import Settings


class Probe(Protocol):
    """Measures the load window (the suite's CPU meter)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class RunReport:
    """Everything a run found; ``as_dict`` is the ``--json`` output."""

    load: dict[str, Any]
    drain: dict[str, Any]
    lag: dict[str, dict[str, float]]
    checks: list[Check] = field(default_factory=list)
    # The client's ledger, for callers that re-check later (tests plant violations).
    ledger: Ledger | None = None

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "load": self.load,
            "drain": self.drain,
            "consumer_lag": self.lag,
            "checks": [check.as_dict() for check in self.checks],
        }


async def bench_run(
    config: LoadConfig,
    targets: Targets,
    settings: Settings,
    *,
    database_url: str = "",
    connections: int = DEFAULT_CONNECTIONS,
    check: bool = True,
    drain_timeout_s: float = 60.0,
    probe: Probe | None = None,
) -> RunReport:
    """Run the load described by ``config`` against ``targets`` and check the result.

    ``probe`` (optional, e.g. the suite's CPU meter) gets ``start()`` when the measured
    load begins and ``stop()`` once the consumers have drained it.
    """
    clients = Clients(targets, settings, connections)
    reader = LogReader(database_url, config.wallet_prefix) if database_url else None
    try:
        await clients.wait_ready()
        generator = LoadGenerator(clients, config)
        await generator.setup()
        if reader is not None:
            await asyncio.to_thread(reader.analyze)
        window_start = datetime.now(UTC)
        if probe is not None:
            probe.start()
        await generator.run()
        await generator.settle()
        load = generator.summary()
        if not check:
            if probe is not None:
                probe.stop()
            return RunReport(load=load, drain={}, lag={}, ledger=generator.ledger)
        drain = await wait_for_drain(
            clients, generator.ledger, config, reader, timeout_s=drain_timeout_s
        )
        if probe is not None:
            probe.stop()
        drain_info = {
            "drained": drain.drained,
            "seconds": round(drain.seconds, 3),
            "remaining": drain.remaining,
        }
        checks: list[Check] = []
        lag: dict[str, dict[str, float]] = {}
        if reader is not None:
            snapshot = await asyncio.to_thread(reader.snapshot)
            checks.extend(check_log(snapshot, generator.ledger, config))
            lag = await asyncio.to_thread(reader.consumer_lag, window_start)
        api_checks = await check_api(clients, generator.ledger, config)
        seen = {c.name for c in checks}
        for api_check in api_checks:
            if api_check.name in seen:
                # Both witnesses must agree; keep the API's verdict only when it failed.
                if not api_check.ok:
                    api_check.name += "_api"
                    checks.append(api_check)
            else:
                checks.append(api_check)
        stats_problems = await api_stats_mismatches(clients, generator.ledger, config)
        checks.append(verdict("analytics_match_client", stats_problems))
        checks.append(
            verdict(
                "drained",
                []
                if drain.drained
                else [f"not drained after {drain.seconds:.1f}s: {drain.remaining}"],
                f"in {drain.seconds:.2f}s",
            )
        )
        return RunReport(
            load=load, drain=drain_info, lag=lag, checks=checks, ledger=generator.ledger
        )
    finally:
        await clients.close()
        if reader is not None:
            reader.close()


def render(report: RunReport) -> str:
    """A human-readable summary of one run."""
    load = report.load
    lines = [
        f"{load['label']}: {load['requests']} requests in {load['elapsed_s']:.1f}s "
        f"= {load['per_second']:,.0f}/s",
        f"  {'operation':<10} {'count':>8} {'per s':>9} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8}  outcomes",
    ]
    for name, op in load["operations"].items():
        outcomes = " ".join(f"{k}={v}" for k, v in op["outcomes"].items())
        lines.append(
            f"  {name:<10} {op['count']:>8} {op['per_second']:>9,.1f} {op['p50_ms']:>8.1f} "
            f"{op['p95_ms']:>8.1f} {op['p99_ms']:>8.1f}  {outcomes}"
        )
    if load["transfers"]:
        states = ", ".join(f"{k} {v}" for k, v in sorted(load["transfers"].items()))
        lines.append(
            f"  transfers: {states}; completed in window "
            f"{load['transfers_completed_per_second']:,.1f}/s"
        )
    if report.drain:
        status = "drained" if report.drain["drained"] else "NOT drained"
        lines.append(f"  consumers: {status} {report.drain['seconds']:.2f}s after the load")
    for consumer, lag in sorted(report.lag.items()):
        lines.append(
            f"  lag {consumer}: p50 {lag['p50_s']:.3f}s p99 {lag['p99_s']:.3f}s "
            f"max {lag['max_s']:.3f}s over {int(lag['events'])} events"
        )
    if report.checks:
        lines.append("  invariants:")
        for check in report.checks:
            mark = "ok  " if check.ok else "FAIL"
            lines.append(f"    [{mark}] {check.name}: {check.detail}")
            lines.extend(f"           {example}" for example in check.examples)
    return "\n".join(lines)
