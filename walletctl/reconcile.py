"""``walletctl reconcile``'s library: the invariant checks over one database snapshot,
and their report.

The checks themselves are :mod:`wallet_checks` (shared with ``wallet-bench``); this
module runs all of them over the whole database in one read-only snapshot
(:func:`walletctl.dbutil.snapshot`) and renders the result. Reuse::

    from walletctl.reconcile import ReconcileOptions, reconcile
    report = reconcile(database_url, ReconcileOptions(outbox_max_age_seconds=30))
    assert report.ok, report.render_text()

or, inside an existing synchronous connection, ``run_checks(conn, options)``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from wallet_checks.context import ERROR, WARNING, CheckOptions, CheckResult, Row
from wallet_checks.runner import CHECKS, run_checks
from walletctl.dbutil import masked, snapshot

# The reconcile command's options are the checks' options.
ReconcileOptions = CheckOptions

__all__ = ["CHECKS", "ReconcileOptions", "Report", "reconcile", "run_checks"]


@dataclass
class Report:
    database: str
    checked_at: datetime
    duration_seconds: float
    results: list[CheckResult]

    @property
    def errors(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok and r.severity == ERROR]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok and r.severity == WARNING]

    @property
    def ok(self) -> bool:
        """True when no error-severity check found a problem (warnings do not fail)."""
        return not self.errors

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "database": self.database,
            "checked_at": self.checked_at.isoformat().replace("+00:00", "Z"),
            "duration_seconds": round(self.duration_seconds, 3),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checks": [
                {**asdict(r), "ok": r.ok, "examples": [_plain(e) for e in r.examples]}
                for r in self.results
            ],
        }

    def render_text(self) -> str:
        lines = [f"reconcile {self.database} at {self.to_dict()['checked_at']}", ""]
        width = max(len(r.name) for r in self.results) if self.results else 0
        for r in self.results:
            if r.ok:
                mark = "ok   "
            elif r.severity == ERROR:
                mark = "DRIFT"
            else:
                mark = "warn "
            count = "" if r.ok else f"  {r.problems} problem(s)"
            lines.append(f"{mark}  {r.name.ljust(width)}  {r.description}{count}")
            if r.note:
                lines.append(f"       {' ' * width}  note: {r.note}")
            if r.facts:
                facts = "; ".join(f"{key}: {_fact(value)}" for key, value in r.facts.items())
                lines.append(f"       {' ' * width}  {facts}")
            for example in r.examples:
                lines.append(f"       {' ' * width}  - {_example(example)}")
            if r.problems > len(r.examples):
                lines.append(f"       {' ' * width}  ... and {r.problems - len(r.examples)} more")
        lines.append("")
        if self.ok:
            verdict = "CLEAN: every invariant holds"
            if self.warnings:
                verdict += f" ({len(self.warnings)} warning(s))"
        else:
            names = ", ".join(r.name for r in self.errors)
            verdict = f"DRIFT FOUND in {len(self.errors)} check(s): {names}"
        lines.append(verdict)
        return "\n".join(lines)


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _fact(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fact(v)}" for k, v in value.items()) or "-"
    return str(_plain(value))


def _example(example: Row) -> str:
    return "  ".join(f"{k}={_plain(v)}" for k, v in example.items())


def reconcile(
    database_url: str, options: ReconcileOptions | None = None, now: datetime | None = None
) -> Report:
    """Open a snapshot of ``database_url``, run the checks, return the report."""
    started = time.monotonic()
    checked_at = now or datetime.now(UTC)
    with snapshot(database_url) as conn:
        results = run_checks(conn, options, checked_at)
    return Report(
        database=masked(database_url),
        checked_at=checked_at,
        duration_seconds=time.monotonic() - started,
        results=results,
    )
