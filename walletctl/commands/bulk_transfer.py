"""``walletctl bulk transfer --csv FILE``: many transfers through BatchCreateTransfers.

The file has a header row with the columns ``from_wallet_id``, ``to_wallet_id``,
``amount`` (minor units) and, optionally, ``request_id``. A row without a request_id
gets one derived from the file's name, the row's line number and the row itself, so
running the same file again is safe: every transfer it already started is answered
as a replay instead of moving money twice. (A different file with the same name and
the same rows would be taken for a replay too: give such files a request_id column.)

The whole file is read and checked before anything is sent. Transfers go in chunks
(``--chunk``, the server takes at most 1,000 per call) with retries that keep each
transfer's request_id (``wallet_client.batch``); progress goes to stderr. ``--wait``
then follows every transfer still in flight with GetTransfer until it is terminal.

Exit codes: 0 when every transfer was accepted (and, with ``--wait``, none ended
FAILED or COMPENSATED), 3 when some could not be sent or met a transient error (run
the same file again), otherwise 1.
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

from wallet.v1 import transfer_pb2
from wallet_client.client import new_request_id
from wallet_client.retry import RETRYABLE_CODES, RetryPolicy
from wallet_client.transfer_batches import DEFAULT_CHUNK, SERVER_MAX, TransferItem, TransferOutcome
from wallet_client.transfer_batches import batch_create_transfers as send_batches
from walletctl import exitcodes, render
from walletctl.commands import leaf
from walletctl.commands.transfers import DID_NOT_MOVE, TERMINAL
from walletctl.context import Context, UsageError

COLUMNS = ("from_wallet_id", "to_wallet_id", "amount", "request_id")
REQUIRED = COLUMNS[:3]


def chunk_size(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
    if not 1 <= value <= SERVER_MAX:
        raise argparse.ArgumentTypeError(f"must be 1..{SERVER_MAX}")
    return value


def register_transfer(cmds: Any, common: argparse.ArgumentParser) -> None:
    """``transfer`` under ``walletctl bulk`` (the group is made by ``bulk``)."""
    p = leaf(
        cmds,
        "transfer",
        common,
        transfer,
        "start the transfers of a CSV file (BatchCreateTransfers)",
        __doc__,
    )
    p.add_argument(
        "--csv",
        required=True,
        metavar="FILE",
        help="columns from_wallet_id,to_wallet_id,amount[,request_id] (header row)",
    )
    p.add_argument(
        "--chunk",
        type=chunk_size,
        default=DEFAULT_CHUNK,
        help=f"transfers per call (default {DEFAULT_CHUNK}, at most {SERVER_MAX})",
    )
    p.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=60.0,
        default=None,
        metavar="SECONDS",
        help="then follow unfinished transfers until terminal, up to SECONDS (default 60)",
    )


@dataclass(frozen=True)
class Row:
    line: int
    item: TransferItem


def derived_request_id(name: str, line: int, from_id: str, to_id: str, amount: int) -> str:
    """The key of a row without one: the same file run again gives the same keys."""
    raw = f"{name}\x00{line}\x00{from_id}\x00{to_id}\x00{amount}".encode()
    return "bulk-" + hashlib.sha256(raw).hexdigest()[:40]


def read_rows(path: str) -> tuple[list[Row], int]:
    """Every row of the file (UsageError naming the line of the first bad one) and
    how many got a derived request_id."""
    name = os.path.basename(path)
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    rows: list[Row] = []
    derived = 0
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise UsageError(f"{path}: the header must name {', '.join(COLUMNS[:3])}")
        for record in reader:
            line = reader.line_num
            from_id = (record.get("from_wallet_id") or "").strip()
            to_id = (record.get("to_wallet_id") or "").strip()
            raw_amount = (record.get("amount") or "").strip()
            try:
                amount = int(raw_amount)
            except ValueError:
                raise UsageError(
                    f"{path}:{line}: amount {raw_amount!r} is not an integer (minor units)"
                ) from None
            request_id = (record.get("request_id") or "").strip()
            if not request_id:
                request_id = derived_request_id(name, line, from_id, to_id, amount)
                derived += 1
            rows.append(Row(line, TransferItem(from_id, to_id, amount, request_id)))
    if not rows:
        raise UsageError(f"{path}: no transfers")
    return rows, derived


def transfer(ctx: Context, args: argparse.Namespace) -> int:
    rows, derived = read_rows(args.csv)
    if derived:
        ctx.note(
            f"{derived} request ids derived from the file name, line and row: running "
            "this file again is safe"
        )

    def send(
        request: transfer_pb2.BatchCreateTransfersRequest, deadline: float
    ) -> transfer_pb2.BatchCreateTransfersResponse:
        response: transfer_pb2.BatchCreateTransfersResponse = ctx.clients.call(
            "transfer", "BatchCreateTransfers", request, timeout=deadline
        )
        return response

    outcomes = send_batches(
        send,
        [row.item for row in rows],
        new_key=new_request_id,
        policy=RetryPolicy(),
        timeout=ctx.config.timeout,
        chunk_size=args.chunk,
        on_chunk=lambda done, total: ctx.note(f"sent {done}/{total} transfers"),
    )
    transfers = {o.request_id: o.transfer for o in outcomes if o.transfer is not None}
    if args.wait is not None:
        transfers = follow(ctx, transfers, args.wait)
    return report(ctx, rows, outcomes, transfers)


def follow(
    ctx: Context, transfers: dict[str, Any], within: float
) -> dict[str, transfer_pb2.Transfer]:
    """Poll GetTransfer for each unfinished transfer until terminal or ``within`` passes."""
    latest = dict(transfers)
    deadline = time.monotonic() + max(0.0, within)
    delay = 0.05
    while True:
        unfinished = [key for key, t in latest.items() if t.state not in TERMINAL]
        if not unfinished:
            break
        ctx.note(f"waiting for {len(unfinished)} transfers to finish")
        if time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
        for key in unfinished:
            request = transfer_pb2.GetTransferRequest(transfer_id=latest[key].transfer_id)
            latest[key] = ctx.call("transfer", "GetTransfer", request).transfer
    return latest


def outcome_label(outcome: TransferOutcome, current: transfer_pb2.Transfer | None) -> str:
    """How one row ended, for the summary: a state (``replayed`` marked) or a reason."""
    if outcome.error is not None:
        return f"refused {outcome.error.reason}"
    assert current is not None and outcome.response is not None
    state = render.transfer_state(current.state)
    return f"{state} (replayed)" if outcome.response.replayed else state


def report(
    ctx: Context,
    rows: list[Row],
    outcomes: list[TransferOutcome],
    transfers: dict[str, transfer_pb2.Transfer],
) -> int:
    results = []
    counts: collections.Counter[str] = collections.Counter()
    transient = failed = False
    for row, outcome in zip(rows, outcomes, strict=True):
        current = transfers.get(outcome.request_id)
        label = outcome_label(outcome, current)
        counts[label] += 1
        entry: dict[str, Any] = {"line": row.line, "request_id": outcome.request_id}
        if outcome.error is not None:
            transient |= outcome.error.code in RETRYABLE_CODES
            failed = True
            entry["error"] = {
                "code": outcome.error.code.name,
                "reason": outcome.error.reason,
                "message": outcome.error.message,
            }
        else:
            assert current is not None and outcome.response is not None
            failed |= current.state in DID_NOT_MOVE
            entry["replayed"] = outcome.response.replayed
            entry["transfer"] = render.transfer(current)
        results.append(entry)
    summary = dict(sorted(counts.items()))

    def text() -> str:
        lines = [f"{len(rows)} transfers:"]
        lines += [f"  {count:>7}  {label}" for label, count in summary.items()]
        for entry in results:
            if "error" in entry:
                error = entry["error"]
                lines.append(f"line {entry['line']}: {error['reason']}: {error['message']}")
        return "\n".join(lines)

    ctx.emit({"summary": summary, "results": results}, text)
    if transient:
        return exitcodes.UNAVAILABLE
    return exitcodes.FAILED if failed else exitcodes.OK
