"""``walletctl bulk deposit|withdraw --csv FILE``: many balance changes from a file
(``bulk transfer`` is in ``bulk_transfer``).

The file is CSV with a header naming the columns ``wallet_id`` and ``amount``
(required) and ``currency`` and ``request_id`` (optional, may be empty per row):

- ``amount``: a positive integer of minor units (cents), as the API takes it;
- ``currency``: when given, the wallet's currency must be this one, checked before
  anything is sent (one GetWallet per distinct wallet), so a file written for yen
  cannot move dollars; a row that does not match is refused locally
  (``CURRENCY_MISMATCH``) and not sent;
- ``request_id``: the row's idempotency key. Without one the key is derived from the
  file and the line number (``bulk-`` + a SHA-256 of ``--key-prefix``, by default
  the file's absolute path, and the line number), so running the same file again
  replays every row instead of applying it twice, and a row edited in place is
  refused (REQUEST_ID_REUSED) rather than applied a second time. Use
  ``--key-prefix`` when a file of the same path is reused for a new run.

The whole file is checked first (header, amounts, keys repeated in the file): any bad
row stops the command with exit 2 and nothing is sent. Rows are then sent in
``BatchDeposit`` / ``BatchWithdraw`` calls of at most ``--chunk-size`` rows (default
and maximum 1,000) by ``wallet_client``'s batch sender (same keys on every retry). A
progress line goes to stderr after each call; the summary counts rows applied,
replayed and refused by reason (``--json``: every refused row with its line).

Exit code: 0 when every row was applied or replayed; 1 when a row was refused;
3 when the server could not be reached or did not answer for some rows (run the
same command again: the applied rows replay).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc

from wallet.v1 import wallet_pb2
from wallet_client.batches import MAX_BATCH_ITEMS, BatchSender, ItemOutcome, MoveItem
from wallet_client.retry import RetryPolicy
from wallet_platform.validation import INT64_MAX
from walletctl import exitcodes
from walletctl.commands import group, leaf, positive_int
from walletctl.commands.bulk_transfer import register_transfer
from walletctl.context import Context, UsageError

REQUIRED = ("wallet_id", "amount")
KNOWN = (*REQUIRED, "currency", "request_id")
_SHOWN_ERRORS = 10
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class Row:
    line: int
    wallet_id: str
    amount: int
    currency: str
    request_id: str


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    _, cmds = group(
        sub,
        "bulk",
        "deposit, withdraw or transfer many amounts from a CSV file",
        __doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    register_transfer(cmds, common)
    for name, text in (
        ("deposit", "deposit every row of a CSV file (BatchDeposit)"),
        ("withdraw", "withdraw every row of a CSV file (BatchWithdraw)"),
    ):
        p = leaf(cmds, name, common, run, text)
        p.add_argument(
            "--csv", required=True, metavar="FILE", help="wallet_id,amount[,currency][,request_id]"
        )
        p.add_argument(
            "--chunk-size",
            type=positive_int,
            default=MAX_BATCH_ITEMS,
            help=f"rows per call, at most {MAX_BATCH_ITEMS} (default)",
        )
        p.add_argument(
            "--key-prefix",
            help="what rows without a request_id derive their key from, with their line "
            "number (default: the file's absolute path)",
        )


def derived_key(prefix: str, line: int) -> str:
    """The request_id of a row without one: stable for the same prefix and line."""
    return "bulk-" + hashlib.sha256(f"{prefix}\n{line}".encode()).hexdigest()[:40]


def read_rows(path: str, key_prefix: str) -> list[Row]:
    """Every row of the file, or UsageError naming the bad lines (nothing is sent)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or ()]
            missing = [name for name in REQUIRED if name not in header]
            if missing:
                raise UsageError(
                    f"{path}: the header must name {', '.join(REQUIRED)} "
                    f"(optional: currency, request_id); missing {', '.join(missing)}"
                )
            reader.fieldnames = header
            rows, errors = _parse(reader, key_prefix)
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"{path} is not a UTF-8 CSV file: {error}") from None
    if errors:
        shown = "\n  ".join(errors[:_SHOWN_ERRORS])
        more = (
            f"\n  ... and {len(errors) - _SHOWN_ERRORS} more" if len(errors) > _SHOWN_ERRORS else ""
        )
        raise UsageError(f"{path}: {len(errors)} bad rows, nothing sent:\n  {shown}{more}")
    if not rows:
        raise UsageError(f"{path} has no rows")
    return rows


def _parse(reader: csv.DictReader[str], key_prefix: str) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        values = {k: (record.get(k) or "").strip() for k in KNOWN}
        raw = values["amount"]
        if not values["wallet_id"]:
            errors.append(f"line {line}: wallet_id is empty")
            continue
        if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= INT64_MAX:
            errors.append(
                f"line {line}: amount must be a positive integer of minor units, got {raw[:20]!r}"
            )
            continue
        request_id = values["request_id"] or derived_key(key_prefix, line)
        if request_id in first_line:
            errors.append(
                f"line {line}: request_id {request_id[:64]!r} repeats line {first_line[request_id]}"
            )
            continue
        first_line[request_id] = line
        rows.append(
            Row(line, values["wallet_id"], int(raw), values["currency"].upper(), request_id)
        )
    return rows, errors


def _currency_refusals(ctx: Context, rows: list[Row]) -> dict[int, str]:
    """Row index -> why its currency does not match its wallet's (wallets read once)."""
    currencies: dict[str, str | None] = {}
    refused: dict[int, str] = {}
    for index, row in enumerate(rows):
        if not row.currency:
            continue
        if row.wallet_id not in currencies:
            try:
                wallet = ctx.call(
                    "wallet", "GetWallet", wallet_pb2.GetWalletRequest(wallet_id=row.wallet_id)
                )
                currencies[row.wallet_id] = wallet.wallet.currency
            except grpc.RpcError as error:
                if error.code() not in (
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    raise
                currencies[row.wallet_id] = None  # the server refuses the row itself
        actual = currencies[row.wallet_id]
        if actual is not None and actual != row.currency:
            refused[index] = f"wallet {row.wallet_id!r} holds {actual}, the row says {row.currency}"
    return refused


def run(ctx: Context, args: argparse.Namespace) -> int:
    if args.chunk_size > MAX_BATCH_ITEMS:
        raise UsageError(f"--chunk-size is at most {MAX_BATCH_ITEMS}")
    deposit = args.bulk_command == "deposit"
    rows = read_rows(args.csv, args.key_prefix or os.path.abspath(args.csv))
    local = _currency_refusals(ctx, rows)
    to_send = [i for i in range(len(rows)) if i not in local]
    method = "BatchDeposit" if deposit else "BatchWithdraw"
    stub = ctx.clients.stub("wallet")
    rpc = getattr(stub, method)

    def progress(outcomes: list[ItemOutcome], done: int) -> None:
        answered = outcomes[:done]
        failed = sum(1 for o in answered if not o.ok)
        ctx.note(f"{args.bulk_command}: {done}/{len(to_send)} rows sent, {failed} refused so far")

    sender = BatchSender(
        send=lambda request, deadline: rpc(request, timeout=deadline, metadata=ctx.config.metadata),
        request_type=wallet_pb2.BatchDepositRequest if deposit else wallet_pb2.BatchWithdrawRequest,
        item_type=wallet_pb2.DepositRequest if deposit else wallet_pb2.WithdrawRequest,
        timeout=ctx.config.timeout,
        policy=RetryPolicy(),
        chunk_size=args.chunk_size,
        on_chunk=progress,
    )
    items = [MoveItem(rows[i].wallet_id, rows[i].amount, rows[i].request_id) for i in to_send]
    outcomes = sender.run(items, lambda: "") if items else []
    return _summary(ctx, args, rows, local, dict(zip(to_send, outcomes, strict=True)))


def _summary(
    ctx: Context,
    args: argparse.Namespace,
    rows: list[Row],
    local: dict[int, str],
    sent: dict[int, ItemOutcome],
) -> int:
    applied = sum(1 for o in sent.values() if o.ok and not o.replayed)
    replayed = sum(1 for o in sent.values() if o.replayed)
    refusals: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        outcome = sent.get(index)
        if index in local:
            reason, message = "CURRENCY_MISMATCH", local[index]
        elif outcome is not None and outcome.error is not None:
            reason, message = outcome.error.reason, outcome.error.message
        else:
            continue
        refusals.append(
            {
                "line": row.line,
                "wallet_id": row.wallet_id,
                "request_id": row.request_id,
                "reason": reason,
                "message": message,
                "sent": outcome.sent if outcome is not None else False,
            }
        )
    by_reason = Counter(r["reason"] for r in refusals)
    payload = {
        "file": args.csv,
        "operation": args.bulk_command,
        "rows": len(rows),
        "applied": applied,
        "replayed": replayed,
        "refused": len(refusals),
        "refused_by_reason": dict(sorted(by_reason.items())),
        "refusals": refusals,
    }

    def text() -> str:
        lines = [
            f"{args.bulk_command} {args.csv}: {len(rows)} rows: {applied} applied, "
            f"{replayed} replayed, {len(refusals)} refused"
        ]
        for reason, count in sorted(by_reason.items()):
            where = [str(r["line"]) for r in refusals if r["reason"] == reason]
            more = ", ..." if len(where) > _SHOWN_ERRORS else ""
            lines.append(f"  {reason}: {count} (lines {', '.join(where[:_SHOWN_ERRORS])}{more})")
        return "\n".join(lines)

    ctx.emit(payload, text)
    transient = any(o.error is not None and o.error.code in _TRANSIENT for o in sent.values())
    if transient:
        ctx.note("some rows have no answer: run the same command again (applied rows replay)")
        return exitcodes.UNAVAILABLE
    return exitcodes.FAILED if refusals else exitcodes.OK
