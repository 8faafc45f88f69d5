"""``walletctl wallets``: open, read, time-travel, freeze and move money.

Write commands send an idempotency key: the operator's ``--request-id`` or a fresh
one, printed on stderr, so a write that timed out can be retried without risk of
applying it twice.
"""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from wallet.v1 import wallet_pb2
from walletctl import render
from walletctl.amount_input import add_amount_arguments, minor_units
from walletctl.commands import MORE_HINT, fetch_pages, group, leaf, positive_int, timestamp
from walletctl.context import Context

WALLET_KEYS = ("wallet_id", "currency", "balance", "status", "version", "created_at", "updated_at")
EVENT_COLUMNS = ("sequence", "type", "amount", "balance_after", "transfer_id", "occurred_at")


def _wallet_text(data: dict[str, Any]) -> str:
    return render.record(render.with_money(data, "balance"), WALLET_KEYS)


def _add_request_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--request-id",
        help="idempotency key (1-128 printable ASCII); generated and printed when omitted; "
        "repeat it to retry safely",
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    _, cmds = group(sub, "wallets", "open, read, freeze and move money in wallets")

    p = leaf(cmds, "create", common, create, "open an empty ACTIVE wallet")
    p.add_argument("--currency", required=True, help="ISO 4217 code, e.g. USD")
    p.add_argument("--wallet-id", default="", help="the id to use (default: a server UUID)")
    _add_request_id(p)

    p = leaf(cmds, "show", common, show, "show a wallet as it stands now")
    p.add_argument("wallet_id")

    p = leaf(
        cmds,
        "history",
        common,
        history,
        "list a wallet's event log, newest first",
        "List a wallet's event log, newest first, each entry with the balance after it.",
    )
    p.add_argument("wallet_id")
    p.add_argument(
        "--limit", type=positive_int, default=50, help="at most this many entries (default 50)"
    )
    p.add_argument("--all", action="store_true", help="every entry (pages through the log)")

    p = leaf(
        cmds,
        "balance-at",
        common,
        balance_at,
        "show a wallet as it stood after a sequence number or at a time",
    )
    p.add_argument("wallet_id")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--sequence", type=positive_int, help="right after this event sequence")
    when.add_argument(
        "--time", type=timestamp, help="at this instant, ISO 8601 (e.g. 2026-01-31T12:00:00Z)"
    )

    for name, handler, text in (
        ("freeze", freeze, "freeze a wallet: no debit and no credit until unfrozen"),
        ("unfreeze", unfreeze, "make a frozen wallet ACTIVE again"),
    ):
        p = leaf(cmds, name, common, handler, text)
        p.add_argument("wallet_id")
        _add_request_id(p)

    for name, handler, text in (
        ("deposit", deposit, "credit money from outside the platform"),
        ("withdraw", withdraw, "debit money to outside the platform (never below zero)"),
    ):
        p = leaf(cmds, name, common, handler, text)
        p.add_argument("wallet_id")
        add_amount_arguments(p, "the wallet's")
        _add_request_id(p)


def create(ctx: Context, args: argparse.Namespace) -> int:
    request_id = ctx.request_id_for(args.request_id)
    response = ctx.call(
        "wallet",
        "CreateWallet",
        wallet_pb2.CreateWalletRequest(
            wallet_id=args.wallet_id, currency=args.currency, request_id=request_id
        ),
    )
    return _wallet_change(ctx, response, request_id)


def _wallet_change(ctx: Context, response: Any, request_id: str) -> int:
    data = render.wallet(response.wallet)
    payload = {
        "wallet": data,
        "request_id": request_id,
        "replayed": response.replayed,
        "audit_id": ctx.audit_id,
    }

    def text() -> str:
        lines = [_wallet_text(data)]
        if response.replayed:
            lines.append("(replayed: this request id was already applied; nothing changed)")
        if ctx.audit_id:
            lines.append(f"(audit id {ctx.audit_id})")
        return "\n".join(lines)

    ctx.emit(payload, text)
    return 0


def show(ctx: Context, args: argparse.Namespace) -> int:
    request = wallet_pb2.GetWalletRequest(wallet_id=args.wallet_id)
    response = ctx.call("wallet", "GetWallet", request)
    data = render.wallet(response.wallet)
    ctx.emit({"wallet": data}, lambda: _wallet_text(data))
    return 0


def history(ctx: Context, args: argparse.Namespace) -> int:
    events, more = fetch_pages(
        lambda page_size, token: ctx.call(
            "wallet",
            "ListWalletEvents",
            wallet_pb2.ListWalletEventsRequest(
                wallet_id=args.wallet_id, page_size=page_size, page_token=token
            ),
        ),
        lambda response: (render.event(e) for e in response.events),
        None if args.all else args.limit,
    )
    ctx.emit(
        {"wallet_id": args.wallet_id, "events": events, "more": more},
        lambda: (
            render.table(
                [render.with_money(e, "amount", "balance_after") for e in events],
                EVENT_COLUMNS,
                ("seq", "type", "amount", "balance after", "transfer", "occurred at"),
                right=("sequence", "amount", "balance_after"),
            )
            + (MORE_HINT if more else "")
        ),
    )
    return 0


def balance_at(ctx: Context, args: argparse.Namespace) -> int:
    request = wallet_pb2.GetWalletRequest(wallet_id=args.wallet_id)
    if args.sequence:
        request.as_of_sequence = args.sequence
    else:
        stamp = Timestamp()
        stamp.FromDatetime(args.time)
        request.as_of_time.CopyFrom(stamp)
    response = ctx.call("wallet", "GetWallet", request)
    data = render.wallet(response.wallet)
    as_of = {"sequence": args.sequence} if args.sequence else {"time": render.iso(args.time)}
    ctx.emit(
        {"wallet": data, "as_of": as_of},
        lambda: f"as of {next(iter(as_of))} {next(iter(as_of.values()))}:\n" + _wallet_text(data),
    )
    return 0


def freeze(ctx: Context, args: argparse.Namespace) -> int:
    request_id = ctx.request_id_for(args.request_id)
    response = ctx.call(
        "wallet",
        "FreezeWallet",
        wallet_pb2.FreezeWalletRequest(wallet_id=args.wallet_id, request_id=request_id),
    )
    return _wallet_change(ctx, response, request_id)


def unfreeze(ctx: Context, args: argparse.Namespace) -> int:
    request_id = ctx.request_id_for(args.request_id)
    response = ctx.call(
        "wallet",
        "UnfreezeWallet",
        wallet_pb2.UnfreezeWalletRequest(wallet_id=args.wallet_id, request_id=request_id),
    )
    return _wallet_change(ctx, response, request_id)


def _money(ctx: Context, args: argparse.Namespace, method: str, request_cls: Any) -> int:
    minor = minor_units(ctx, args, args.wallet_id)
    request_id = ctx.request_id_for(args.request_id)
    response = ctx.call(
        "wallet",
        method,
        request_cls(wallet_id=args.wallet_id, amount=minor, request_id=request_id),
    )
    wallet = render.wallet(response.wallet)
    event = render.event(response.event)
    payload = {
        "wallet": wallet,
        "event": event,
        "request_id": request_id,
        "replayed": response.replayed,
        "audit_id": ctx.audit_id,
    }

    def text() -> str:
        verb = "deposited" if method == "Deposit" else "withdrew"
        line = (
            f"{verb} {render.money(event['amount'], wallet['currency'])} "
            f"(event #{event['sequence']} {event['event_id']}); "
            f"balance now {render.money(wallet['balance'], wallet['currency'])}"
        )
        if response.replayed:
            line += "\n(replayed: this request id was already applied; nothing changed)"
        if ctx.audit_id:
            line += f"\n(audit id {ctx.audit_id})"
        return line

    ctx.emit(payload, text)
    return 0


def deposit(ctx: Context, args: argparse.Namespace) -> int:
    return _money(ctx, args, "Deposit", wallet_pb2.DepositRequest)


def withdraw(ctx: Context, args: argparse.Namespace) -> int:
    return _money(ctx, args, "Withdraw", wallet_pb2.WithdrawRequest)
