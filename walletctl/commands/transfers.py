"""``walletctl transfers``: start a transfer saga, follow it, list and summarise.

``transfers create`` exits 0 when the transfer COMPLETED (or is still in flight when
the wait ends: it is accepted and will finish), 1 when it ended FAILED or
COMPENSATED: the money did not move, which a script must notice.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from saga_orchestrator.domain import TERMINAL_STATES
from wallet.v1 import transfer_pb2
from walletctl import exitcodes, render
from walletctl.amount_input import add_amount_arguments, minor_units
from walletctl.commands import MORE_HINT, fetch_pages, group, leaf, positive_int
from walletctl.context import Context

# The saga's terminal states, as the API's TRANSFER_STATE_<name> values; those other
# than COMPLETED mean the money did not move (exit 1).
TERMINAL = frozenset(
    transfer_pb2.TransferState.Value(f"TRANSFER_STATE_{state}") for state in TERMINAL_STATES
)
DID_NOT_MOVE = TERMINAL - {transfer_pb2.TRANSFER_STATE_COMPLETED}
STATE_NAMES = [
    v.name.removeprefix("TRANSFER_STATE_")
    for v in transfer_pb2.TransferState.DESCRIPTOR.values
    if v.number != transfer_pb2.TRANSFER_STATE_UNSPECIFIED
]
LIST_COLUMNS = ("transfer_id", "state", "from_wallet_id", "to_wallet_id", "amount", "created_at")
TRANSFER_KEYS = (
    "transfer_id",
    "request_id",
    "state",
    "from_wallet_id",
    "to_wallet_id",
    "amount",
    "currency",
    "failure_code",
    "failure_reason",
    "created_at",
    "updated_at",
)
STEP_COLUMNS = ("name", "outcome", "attempts", "error", "started_at", "finished_at")


def state_arg(raw: str) -> str:
    name = raw.strip().upper().removeprefix("TRANSFER_STATE_")
    if name not in STATE_NAMES:
        raise argparse.ArgumentTypeError(f"unknown state {raw!r}; one of {', '.join(STATE_NAMES)}")
    return f"TRANSFER_STATE_{name}"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    _, cmds = group(sub, "transfers", "start, follow and list transfers (sagas)")

    p = leaf(
        cmds,
        "create",
        common,
        create,
        "move money between two wallets (a saga)",
        "Start a transfer. Exits 0 when COMPLETED or still in flight, 1 when it ended "
        "FAILED (nothing moved) or COMPENSATED (refunded to the sender).",
    )
    p.add_argument("from_wallet_id", metavar="FROM")
    p.add_argument("to_wallet_id", metavar="TO")
    add_amount_arguments(p, "the sender's")
    p.add_argument(
        "--request-id",
        help="idempotency key; generated and printed when omitted; repeat it to retry safely",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="poll until a terminal state for up to this long (default 10; 0 = do not wait)",
    )

    p = leaf(cmds, "show", common, show, "show a transfer and its steps")
    p.add_argument("transfer_id")

    p = leaf(cmds, "list", common, list_transfers, "list transfers, newest first")
    p.add_argument("--state", type=state_arg, help=f"only this state ({', '.join(STATE_NAMES)})")
    p.add_argument("--wallet", default="", help="only transfers from or to this wallet")
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")
    p.add_argument("--all", action="store_true", help="every match (pages through)")

    leaf(
        cmds,
        "summary",
        common,
        summary,
        "counts per state, oldest unfinished saga, sagas retrying now",
    )


def _transfer_text(data: dict[str, Any]) -> str:
    lines = [render.record(render.with_money(data, "amount"), TRANSFER_KEYS)]
    if data["steps"]:
        lines.append("")
        lines.append(render.table(data["steps"], STEP_COLUMNS, right=("attempts",)))
    return "\n".join(lines)


def _exit_for(transfer: transfer_pb2.Transfer) -> int:
    if transfer.state in DID_NOT_MOVE:
        return exitcodes.FAILED  # the money did not move
    return exitcodes.OK


def create(ctx: Context, args: argparse.Namespace) -> int:
    minor = minor_units(ctx, args, args.from_wallet_id)
    request_id = ctx.request_id_for(args.request_id)
    response = ctx.call(
        "transfer",
        "CreateTransfer",
        transfer_pb2.CreateTransferRequest(
            request_id=request_id,
            from_wallet_id=args.from_wallet_id,
            to_wallet_id=args.to_wallet_id,
            amount=minor,
        ),
    )
    transfer = response.transfer
    audit_id = ctx.audit_id
    deadline = time.monotonic() + max(0.0, args.wait)
    delay = 0.05
    while transfer.state not in TERMINAL and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
        transfer = ctx.call(
            "transfer",
            "GetTransfer",
            transfer_pb2.GetTransferRequest(transfer_id=transfer.transfer_id),
        ).transfer
    data = render.transfer(transfer)
    payload = {
        "transfer": data,
        "request_id": request_id,
        "replayed": response.replayed,
        "audit_id": audit_id,
    }

    def text() -> str:
        lines = [_transfer_text(data)]
        if response.replayed:
            lines.append("(replayed: this request id names an existing transfer)")
        if audit_id:
            lines.append(f"(audit id {audit_id})")
        if transfer.state not in TERMINAL:
            lines.append(
                f"(still {data['state']}; follow it with: walletctl transfers show "
                f"{transfer.transfer_id})"
            )
        return "\n".join(lines)

    ctx.emit(payload, text)
    return _exit_for(transfer)


def show(ctx: Context, args: argparse.Namespace) -> int:
    response = ctx.call(
        "transfer", "GetTransfer", transfer_pb2.GetTransferRequest(transfer_id=args.transfer_id)
    )
    data = render.transfer(response.transfer)
    ctx.emit({"transfer": data}, lambda: _transfer_text(data))
    return 0


def list_transfers(ctx: Context, args: argparse.Namespace) -> int:
    found, more = fetch_pages(
        lambda page_size, token: ctx.call(
            "transfer",
            "ListTransfers",
            transfer_pb2.ListTransfersRequest(
                state=args.state, wallet_id=args.wallet, page_size=page_size, page_token=token
            ),
        ),
        lambda response: (render.transfer(t) for t in response.transfers),
        None if args.all else args.limit,
    )
    ctx.emit(
        {"transfers": found, "more": more},
        lambda: (
            render.table(
                [render.with_money(t, "amount") for t in found],
                LIST_COLUMNS,
                ("transfer", "state", "from", "to", "amount", "created at"),
                right=("amount",),
            )
            + (MORE_HINT if more else "")
        ),
    )
    return 0


def summary_text(data: dict[str, Any]) -> str:
    counts = [{"state": s, "count": data["counts"].get(s, 0)} for s in STATE_NAMES]
    lines = [render.table(counts, ("state", "count"), right=("count",)), ""]
    lines.append(f"unfinished: {data['unfinished']}")
    if data["oldest_unfinished_transfer_id"]:
        lines.append(
            f"oldest unfinished: {data['oldest_unfinished_transfer_id']} "
            f"({data['oldest_unfinished_age_seconds']:.1f}s old)"
        )
    if data["retrying"]:
        lines.append("")
        lines.append("retrying:")
        lines.append(
            render.table(
                data["retrying"],
                ("transfer_id", "state", "attempts", "last_error", "next_attempt_at"),
                right=("attempts",),
            )
        )
    return "\n".join(lines)


def summary(ctx: Context, args: argparse.Namespace) -> int:
    response = ctx.call("transfer", "GetTransferSummary", transfer_pb2.GetTransferSummaryRequest())
    data = render.summary(response)
    ctx.emit(data, lambda: summary_text(data))
    return 0
