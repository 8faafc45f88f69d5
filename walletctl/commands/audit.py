"""``walletctl audit``: query the audit trail (the ``audit_log`` table).

The audit interceptor records every write call (accepted or refused) with its method,
redacted request, caller, peer, time, duration and resulting status code. This
command reads the table directly (``--database-url``), newest first. Given one
``--audit-id`` it also follows the id into the ledger and the sagas: the wallet events
and transfers that call produced carry the same id.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from walletctl import render
from walletctl.commands import leaf, positive_int, timestamp
from walletctl.context import Context, OperationFailedError

LIST_COLUMNS = ("started_at", "method", "status_code", "caller", "peer", "duration_ms", "audit_id")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = leaf(sub, "audit", common, audit, "query the audit trail of write calls", __doc__)
    p.add_argument("--audit-id", help="one record, with the events and transfers it produced")
    p.add_argument(
        "--method",
        help="method name or part of it, case-insensitive (e.g. Deposit, WalletService/Freeze)",
    )
    p.add_argument(
        "--status",
        help="resulting gRPC status code, e.g. OK, INVALID_ARGUMENT, PERMISSION_DENIED",
    )
    p.add_argument("--failed", action="store_true", help="only calls that did not end OK")
    p.add_argument("--caller", help="caller identity (exact)")
    p.add_argument("--since", type=timestamp, help="started at or after (ISO 8601)")
    p.add_argument("--until", type=timestamp, help="started before (ISO 8601)")
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")


def _record(row: dict[str, Any]) -> dict[str, Any]:
    from walletctl.dbutil import as_datetime

    data = dict(row)
    data["started_at"] = render.iso(as_datetime(data.get("started_at")))
    method = data.get("method") or ""
    data["method_short"] = method.rsplit("/", 1)[-1]
    try:
        data["request"] = json.loads(data.pop("request_json") or "null")
    except ValueError:
        data["request"] = data.get("request_json")
    return data


def audit(ctx: Context, args: argparse.Namespace) -> int:
    from sqlalchemy import DateTime, bindparam, text

    from walletctl.dbutil import snapshot

    clauses: list[str] = []
    params: dict[str, Any] = {}
    if args.audit_id:
        clauses.append("audit_id = :audit_id")
        params["audit_id"] = args.audit_id
    if args.method:
        clauses.append("LOWER(method) LIKE :method")
        params["method"] = f"%{args.method.lower()}%"
    if args.status:
        clauses.append("status_code = :status")
        params["status"] = args.status.strip().upper()
    if args.failed:
        clauses.append("(status_code IS NULL OR status_code <> 'OK')")
    if args.caller:
        clauses.append("caller = :caller")
        params["caller"] = args.caller
    if args.since:
        clauses.append("started_at >= :since")
        params["since"] = args.since
    if args.until:
        clauses.append("started_at < :until")
        params["until"] = args.until
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    statement = text(
        "SELECT audit_id, method, status_code, error_message, caller, peer, started_at, "
        f"duration_ms, request_json FROM audit_log {where} "
        "ORDER BY started_at DESC, audit_id LIMIT :limit"
    ).bindparams(
        *(bindparam(n, type_=DateTime(timezone=True)) for n in ("since", "until") if n in params)
    )
    params["limit"] = args.limit
    with snapshot(ctx.database_url) as conn:
        rows = [_record(dict(r._mapping)) for r in conn.execute(statement, params)]
        if args.audit_id:
            if not rows:
                raise OperationFailedError(f"no audit record {args.audit_id!r}")
            return _detail(ctx, conn, rows[0])
    ctx.emit(
        {"records": rows},
        lambda: render.table(
            rows,
            (
                "started_at",
                "method_short",
                "status_code",
                "caller",
                "peer",
                "duration_ms",
                "audit_id",
            ),
            ("started at", "method", "status", "caller", "peer", "ms", "audit id"),
            right=("duration_ms",),
        ),
    )
    return 0


def _detail(ctx: Context, conn: Any, record: dict[str, Any]) -> int:
    """One record plus what it led to: ledger entries and sagas with the same id."""
    from sqlalchemy import text

    from walletctl.dbutil import as_datetime

    audit_id = record["audit_id"]
    events = [
        dict(r._mapping)
        for r in conn.execute(
            text(
                "SELECT event_id, wallet_id, sequence, type, amount, balance_after, currency, "
                "transfer_id, occurred_at FROM wallet_events WHERE audit_id = :a "
                "ORDER BY occurred_at, wallet_id, sequence"
            ),
            {"a": audit_id},
        )
    ]
    for event in events:
        event["occurred_at"] = render.iso(as_datetime(event["occurred_at"]))
    transfers = [
        dict(r._mapping)
        for r in conn.execute(
            text(
                "SELECT transfer_id, state, from_wallet_id, to_wallet_id, amount, currency, "
                "failure_code FROM transfers WHERE audit_id = :a ORDER BY created_at"
            ),
            {"a": audit_id},
        )
    ]
    payload = {"record": record, "events": events, "transfers": transfers}

    def text_view() -> str:
        keys = (
            "audit_id",
            "method",
            "status_code",
            "error_message",
            "caller",
            "peer",
            "started_at",
            "duration_ms",
        )
        lines = [render.record(record, keys), "request:"]
        lines.append(json.dumps(record["request"], indent=2, sort_keys=True))
        lines.append("")
        lines.append("ledger events stamped with this audit id:")
        lines.append(
            render.table(
                [render.with_money(e, "amount", "balance_after") for e in events],
                ("wallet_id", "sequence", "type", "amount", "balance_after", "transfer_id"),
                right=("sequence", "amount", "balance_after"),
            )
        )
        lines.append("")
        lines.append("transfers started by this call:")
        lines.append(
            render.table(
                [render.with_money(t, "amount") for t in transfers],
                ("transfer_id", "state", "from_wallet_id", "to_wallet_id", "amount"),
                right=("amount",),
            )
        )
        return "\n".join(lines)

    ctx.emit(payload, text_view)
    return 0
