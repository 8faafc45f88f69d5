"""``walletctl sagas watch``: a live terminal dashboard of the transfer sagas.

Two feeds: the ``WatchTransfers`` server stream pushes every state change as it
happens (shown as "recent changes"), and ``GetTransferSummary`` is polled every
``--interval`` for the counts per state, the oldest unfinished saga and the sagas
retrying now. The stream is read on a background thread and re-opened with backoff
when the server goes away, so the dashboard survives a restart of the orchestrator.

On a terminal the screen is redrawn in place. Otherwise (a pipe, a test) it prints
one line per change and a summary at the start and the end, or JSON lines with
``--json``; ``--once`` prints one summary and exits, ``--duration`` bounds the run.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import grpc

from wallet.v1 import transfer_pb2
from wallet_platform.backoff import WATCH_RECONNECT
from wallet_platform.server.status import retry_delay
from walletctl import exitcodes, render
from walletctl.commands import group, leaf, positive_int
from walletctl.commands.transfers import summary_text
from walletctl.context import Context

CLEAR = "\x1b[H\x1b[2J"
MAX_SERVER_DELAY_SECONDS = 30.0  # a longer RetryInfo is read as this


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    _, cmds = group(sub, "sagas", "watch the transfer sagas live")
    p = leaf(
        cmds,
        "watch",
        common,
        watch,
        "live dashboard: sagas by state, oldest unfinished, retries, recent changes",
        __doc__,
    )
    p.add_argument("--wallet", default="", help="only transfers from or to this wallet")
    p.add_argument("--transfer", default="", help="only this transfer")
    p.add_argument("--once", action="store_true", help="print one summary and exit")
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after this long (default: until Ctrl-C)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="summary refresh / redraw period (default 1)",
    )
    p.add_argument(
        "--recent", type=positive_int, default=12, help="recent changes to show (default 12)"
    )
    p.add_argument(
        "--max-changes",
        type=positive_int,
        default=None,
        metavar="N",
        help="stop after N state changes (scripts: wait for activity)",
    )


class StreamReader(threading.Thread):
    """Reads WatchTransfers into a queue; reconnects until stopped."""

    def __init__(self, ctx: Context, request: transfer_pb2.WatchTransfersRequest) -> None:
        super().__init__(name="walletctl-watch", daemon=True)
        self.ctx = ctx
        self.request = request
        self.items: queue.Queue[transfer_pb2.Transfer] = queue.Queue()
        self.state = "connecting"
        self.seen = 0
        self.reconnects = 0
        self._stop_event = threading.Event()
        self._call: Any = None
        self._lock = threading.Lock()

    def run(self) -> None:
        failures = 0
        while not self._stop_event.is_set():
            server_delay: float | None = None
            try:
                call = self.ctx.clients.stream("transfer", "WatchTransfers", self.request, None)
                with self._lock:
                    self._call = call
                if self._stop_event.is_set():
                    call.cancel()
                    return
                self.state = "connected"
                for response in call:
                    self.seen += 1
                    failures = 0
                    self.items.put(response.transfer)
                self.state = "ended by server; reconnecting"
            except grpc.RpcError as error:
                if self._stop_event.is_set():
                    return
                code = error.code() if hasattr(error, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    self.state = "not offered by the server (summary polling only)"
                    return
                self.state = f"{code.name if code else 'error'}; reconnecting"
                server_delay = min(retry_delay(error) or 0.0, MAX_SERVER_DELAY_SECONDS)
            self.reconnects += 1
            failures += 1
            # Never sooner than the server asked (RetryInfo: e.g. too many streams).
            self._stop_event.wait((server_delay or 0.0) + WATCH_RECONNECT.delay(failures))

    def stop(self) -> None:
        self._stop_event.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()

    def drain(self) -> list[transfer_pb2.Transfer]:
        drained = []
        while True:
            try:
                drained.append(self.items.get_nowait())
            except queue.Empty:
                return drained


def _change_line(data: dict[str, Any]) -> str:
    stamp = (data.get("updated_at") or "")[11:19]
    return (
        f"{stamp}  {data['state']:<12} {data['transfer_id']}  "
        f"{data['from_wallet_id']} -> {data['to_wallet_id']}  "
        f"{render.money(data['amount'], data['currency'])}"
        + (f"  ({data['failure_code']})" if data.get("failure_code") else "")
    )


def _fetch_summary(ctx: Context) -> dict[str, Any]:
    response = ctx.call("transfer", "GetTransferSummary", transfer_pb2.GetTransferSummaryRequest())
    return render.summary(response)


def _frame(
    ctx: Context,
    summary: dict[str, Any] | None,
    summary_error: str | None,
    recent: deque[dict[str, Any]],
    reader: StreamReader,
) -> str:
    now = render.iso(datetime.now(UTC))
    lines = [
        f"walletctl sagas watch   {ctx.config.target_for('transfer')}   {now}   (Ctrl-C quits)",
        "",
    ]
    if summary is not None:
        lines.append(summary_text(summary))
    if summary_error:
        lines.append(f"summary unavailable: {summary_error}")
    lines.append("")
    lines.append(f"recent changes (stream {reader.state}, {reader.seen} seen):")
    lines.extend(_change_line(item) for item in recent)
    if not recent:
        lines.append("(none yet)")
    return "\n".join(lines)


def watch(ctx: Context, args: argparse.Namespace) -> int:
    if args.once:
        data = _fetch_summary(ctx)
        if ctx.json:
            render.dump_json({"kind": "summary", **data}, ctx.out)
        else:
            ctx.out.write(summary_text(data) + "\n")
        return 0
    interactive = ctx.out.isatty() and not ctx.json
    reader = StreamReader(
        ctx, transfer_pb2.WatchTransfersRequest(transfer_id=args.transfer, wallet_id=args.wallet)
    )
    reader.start()
    recent: deque[dict[str, Any]] = deque(maxlen=args.recent)
    summary: dict[str, Any] | None = None
    summary_error: str | None = None
    stop_at = time.monotonic() + args.duration if args.duration > 0 else None
    interval = max(0.05, args.interval)
    next_refresh = 0.0
    first = True
    shown = 0
    try:
        while True:
            now = time.monotonic()
            last_round = stop_at is not None and now >= stop_at
            changed = reader.drain()
            if args.max_changes is not None:
                changed = changed[: max(0, args.max_changes - shown)]
                shown += len(changed)
                last_round = last_round or shown >= args.max_changes
            for transfer in changed:
                data = render.transfer(transfer)
                recent.appendleft(data)
                if ctx.json:
                    _json_line(ctx, {"kind": "change", "transfer": data})
                elif not interactive:
                    ctx.out.write(_change_line(data) + "\n")
                    ctx.out.flush()
            refresh = now >= next_refresh or last_round
            if refresh:
                next_refresh = now + interval
                try:
                    summary = _fetch_summary(ctx)
                    summary_error = None
                except grpc.RpcError as error:
                    summary_error = f"{error.code().name}: {error.details()}"
            if refresh or (interactive and changed):
                if interactive:
                    frame = _frame(ctx, summary, summary_error, recent, reader)
                    ctx.out.write(CLEAR + frame + "\n")
                    ctx.out.flush()
                elif first or last_round:
                    _print_summary(ctx, summary, summary_error, reader)
                first = False
            if last_round:
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        reader.stop()
        reader.join(timeout=2)
    # Never reached the server at all: say so to scripts (exit 3), as --once would.
    return exitcodes.UNAVAILABLE if summary is None and summary_error else exitcodes.OK


def _json_line(ctx: Context, data: dict[str, Any]) -> None:
    ctx.out.write(json.dumps(data, default=str) + "\n")
    ctx.out.flush()


def _print_summary(
    ctx: Context, summary: dict[str, Any] | None, error: str | None, reader: StreamReader
) -> None:
    if ctx.json:
        _json_line(
            ctx,
            {
                "kind": "summary",
                **(summary or {}),
                "summary_error": error,
                "stream": reader.state,
                "changes_seen": reader.seen,
            },
        )
        return
    if summary is not None:
        ctx.out.write(summary_text(summary) + "\n")
    if error:
        ctx.out.write(f"summary unavailable: {error}\n")
    ctx.out.write(f"stream: {reader.state}, {reader.seen} changes seen\n")
    ctx.out.flush()
