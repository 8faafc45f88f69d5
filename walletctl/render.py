"""Turning API objects into plain dicts (for ``--json``) and aligned tables (for people).

JSON output uses the proto field names, integers for money (minor units, never
floats), ISO 8601 UTC strings for times and enum names without their prefix
(``COMPLETED``, not ``TRANSFER_STATE_COMPLETED``), so scripts can compare them with
the words the docs use. Text output shows money in major units by the currency's
ISO 4217 exponent (``100.00 USD``, ``100 JPY``, ``1.000 BHD``): see :func:`money`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

from google.protobuf.timestamp_pb2 import Timestamp

from wallet.v1 import analytics_pb2, fraud_pb2, transfer_pb2, wallet_pb2
from wallet_platform.currencies import format_minor


def timestamp(value: Timestamp) -> str | None:
    """ISO 8601 UTC, or None for an unset timestamp."""
    if value.seconds == 0 and value.nanos == 0:
        return None
    return iso(value.ToDatetime(tzinfo=UTC))


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        name = str(enum.Name(value))
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


def wallet(w: wallet_pb2.Wallet) -> dict[str, Any]:
    return {
        "wallet_id": w.wallet_id,
        "currency": w.currency,
        "balance": w.balance,
        "status": enum_name(wallet_pb2.WalletStatus, w.status, "WALLET_STATUS_"),
        "version": w.version,
        "created_at": timestamp(w.created_at),
        "updated_at": timestamp(w.updated_at),
    }


def event(e: wallet_pb2.WalletEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "wallet_id": e.wallet_id,
        "sequence": e.sequence,
        "type": enum_name(wallet_pb2.WalletEventType, e.type, "WALLET_EVENT_TYPE_").lower(),
        "amount": e.amount,
        "balance_after": e.balance_after,
        "currency": e.currency,
        "transfer_id": e.transfer_id or None,
        "request_id": e.request_id,
        "audit_id": e.audit_id or None,
        "occurred_at": timestamp(e.occurred_at),
    }


def transfer_state(value: int) -> str:
    return enum_name(transfer_pb2.TransferState, value, "TRANSFER_STATE_")


def transfer(t: transfer_pb2.Transfer) -> dict[str, Any]:
    return {
        "transfer_id": t.transfer_id,
        "request_id": t.request_id,
        "from_wallet_id": t.from_wallet_id,
        "to_wallet_id": t.to_wallet_id,
        "amount": t.amount,
        "currency": t.currency,
        "state": transfer_state(t.state),
        "failure_reason": t.failure_reason or None,
        "failure_code": t.failure_code or None,
        "steps": [
            {
                "name": s.name,
                "outcome": enum_name(
                    transfer_pb2.TransferStepOutcome, s.outcome, "TRANSFER_STEP_OUTCOME_"
                ),
                "attempts": s.attempts,
                "error": s.error or None,
                "started_at": timestamp(s.started_at),
                "finished_at": timestamp(s.finished_at),
            }
            for s in t.steps
        ],
        "created_at": timestamp(t.created_at),
        "updated_at": timestamp(t.updated_at),
    }


def summary(s: transfer_pb2.GetTransferSummaryResponse) -> dict[str, Any]:
    return {
        "counts": {transfer_state(c.state): c.count for c in s.counts},
        "unfinished": s.unfinished,
        "oldest_unfinished_age_seconds": round(s.oldest_unfinished_age_seconds, 3),
        "oldest_unfinished_transfer_id": s.oldest_unfinished_transfer_id or None,
        "retrying": [
            {
                "transfer_id": r.transfer_id,
                "state": transfer_state(r.state),
                "attempts": r.attempts,
                "last_error": r.last_error or None,
                "next_attempt_at": timestamp(r.next_attempt_at),
            }
            for r in s.retrying
        ],
    }


def stats(s: analytics_pb2.WalletStats) -> dict[str, Any]:
    return {
        "wallet_id": s.wallet_id,
        "total_deposited": s.total_deposited,
        "total_withdrawn": s.total_withdrawn,
        "total_transferred_in": s.total_transferred_in,
        "total_transferred_out": s.total_transferred_out,
        "deposit_count": s.deposit_count,
        "withdrawal_count": s.withdrawal_count,
        "transfer_in_count": s.transfer_in_count,
        "transfer_out_count": s.transfer_out_count,
        "events_applied": s.events_applied,
        "last_activity_at": timestamp(s.last_activity_at),
    }


def alert(a: fraud_pb2.FraudAlert) -> dict[str, Any]:
    return {
        "alert_id": a.alert_id,
        "wallet_id": a.wallet_id,
        "rule": enum_name(fraud_pb2.FraudRule, a.rule, "FRAUD_RULE_"),
        "event_ids": list(a.event_ids),
        "detail": a.detail,
        "created_at": timestamp(a.created_at),
    }


# --- text ------------------------------------------------------------------------


def money(amount: int | None, currency: str) -> str | None:
    """Minor units as people read them: ``10050, "USD"`` -> ``"100.50 USD"``.

    Exact (integer digits, never a float); a code without a known exponent shows the
    integer with ``(minor units)``. For text output only: JSON keeps the integer.
    """
    if amount is None:
        return None
    return format_minor(int(amount), currency) if currency else str(amount)


def with_money(row: Mapping[str, Any], *keys: str, currency: str | None = None) -> dict[str, Any]:
    """A copy of ``row`` whose money fields ``keys`` are formatted by :func:`money`
    in ``currency`` (default: the row's own ``currency`` field)."""
    code = currency if currency is not None else str(row.get("currency") or "")
    return {**row, **{key: money(row.get(key), code) for key in keys}}


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return iso(value) or "-"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    headers: Sequence[str] | None = None,
    *,
    right: Iterable[str] = (),
) -> str:
    """A plain aligned table; numeric columns listed in ``right`` align right."""
    heads = [h.upper() for h in (headers or columns)]
    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(heads)]
    align_right = set(right)

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, value in enumerate(values):
            if columns[i] in align_right:
                parts.append(value.rjust(widths[i]))
            else:
                parts.append(value.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    lines = [line(heads)]
    lines.extend(line(r) for r in body)
    if not body:
        lines.append("(none)")
    return "\n".join(lines)


def record(data: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """``key: value`` lines for one object."""
    keys = list(keys or data.keys())
    width = max(len(k) for k in keys) if keys else 0
    return "\n".join(f"{k.ljust(width)}  {cell(data.get(k))}" for k in keys)


def dump_json(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=2, sort_keys=False, default=_json_default)
    out.write("\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
