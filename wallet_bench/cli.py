"""``wallet-bench``: load a running platform and check it, or run the whole suite.

    wallet-bench [run] --duration 20 --concurrency 32 --mix deposit=60,withdraw=20,transfer=20
    wallet-bench suite          # what ``make bench`` runs (see wallet_bench/suite.py)

Exit status: 0 when every invariant held, 1 when one did not, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from wallet_bench.client import DEFAULT_CONNECTIONS, Targets
from wallet_bench.ledger import LoadConfig, parse_mix
from wallet_bench.run import bench_run, render
from wallet_platform.config import load_settings


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The load shape flags, shared by ``run`` and ``suite``."""
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients [32]")
    parser.add_argument("--wallets", type=int, default=1000, help="wallet pool size [1000]")
    parser.add_argument(
        "--hot-skew",
        type=_fraction,
        default=0.0,
        help="share of operations that hit the hot wallets (0-1) [0]",
    )
    parser.add_argument("--hot-wallets", type=int, default=10, help="size of the hot set [10]")
    parser.add_argument(
        "--retry-share",
        type=_fraction,
        default=0.0,
        help="share of requests resent with the same request_id (0-1) [0]",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=DEFAULT_CONNECTIONS,
        help=f"connections per service, dealt round-robin [{DEFAULT_CONNECTIONS}]",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr [when stderr is a terminal]",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wallet-bench", description="Load generator and invariant checker."
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="load a running platform and check it (the default)")
    run.add_argument(
        "--target",
        default=os.environ.get("WALLET_TARGET", "127.0.0.1:50051"),
        help="a wallet-stack (or any server of all services) [WALLET_TARGET]",
    )
    run.add_argument("--wallet-target", default="", help="WalletService, if not --target")
    run.add_argument("--transfer-target", default="", help="TransferService, if not --target")
    run.add_argument("--analytics-target", default="", help="AnalyticsService, if not --target")
    run.add_argument(
        "--database-url",
        default=os.environ.get("WALLET_DATABASE_URL", ""),
        help="the platform's database, for the event-log checks [WALLET_DATABASE_URL]",
    )
    run.add_argument("--duration", type=float, default=None, help="seconds of load [10]")
    run.add_argument("--requests", type=int, default=None, help="stop after N requests")
    run.add_argument(
        "--mix",
        default="deposit=60,withdraw=20,transfer=20",
        help="operation weights [deposit=60,withdraw=20,transfer=20]",
    )
    run.add_argument("--initial-balance", type=int, default=1_000_000, help="per wallet")
    run.add_argument("--max-amount", type=int, default=1_000, help="largest amount sent")
    run.add_argument("--no-check", action="store_true", help="skip the drain and the checks")
    run.add_argument("--drain-timeout", type=float, default=60.0, help="seconds [60]")
    add_load_arguments(run)
    from wallet_bench.suite import add_suite_arguments

    suite = sub.add_parser("suite", help="pgbench baselines + service runs (make bench)")
    add_suite_arguments(suite)
    add_load_arguments(suite)
    return parser


def _run_command(args: argparse.Namespace) -> int:
    try:
        mix = parse_mix(args.mix)
    except ValueError as error:
        print(f"wallet-bench: {error}", file=sys.stderr)
        return 2
    duration = args.duration if args.requests is None else None
    if args.requests is None and duration is None:
        duration = 10.0
    config = LoadConfig(
        duration_s=duration,
        requests=args.requests,
        concurrency=args.concurrency,
        mix=mix,
        wallets=args.wallets,
        hot_skew=args.hot_skew,
        hot_wallets=args.hot_wallets,
        retry_share=args.retry_share,
        initial_balance=args.initial_balance,
        max_amount=args.max_amount,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
        seed=args.seed,
        label="run",
    )
    targets = Targets(
        wallet=args.wallet_target or args.target,
        transfer=args.transfer_target or args.target,
        analytics=args.analytics_target or args.target,
    )
    report = asyncio.run(
        bench_run(
            config,
            targets,
            load_settings(),
            database_url=args.database_url,
            connections=args.connections,
            check=not args.no_check,
            drain_timeout_s=args.drain_timeout,
        )
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render(report))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "suite", "-h", "--help"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    if args.command == "suite":
        from wallet_bench.suite import suite_command

        raise SystemExit(suite_command(args))
    raise SystemExit(_run_command(args))
