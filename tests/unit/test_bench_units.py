"""wallet-bench's pure parts: the mix, percentiles, the expected-ledger arithmetic,
replay comparison and the verdicts table."""

from __future__ import annotations

from collections import Counter

import pytest

from wallet.v1 import transfer_pb2, wallet_pb2
from wallet_bench.checks import LogSnapshot, check_log
from wallet_bench.ledger import Ledger, LoadConfig, Op, parse_mix
from wallet_bench.load import _replay_problem
from wallet_bench.run import RunReport
from wallet_bench.stats import RunStats, percentile
from wallet_bench.targets import render_verdicts, verdicts
from wallet_checks.context import CheckResult, Row
from wallet_checks.runner import CHECKS
from wallet_platform.server.prefork import listen_port


def test_parse_mix_reads_weights_and_rejects_nonsense() -> None:
    assert parse_mix("deposit=60,withdraw=20,transfer=20") == {
        "deposit": 60,
        "withdraw": 20,
        "transfer": 20,
    }
    assert parse_mix("transfer") == {"transfer": 1}
    with pytest.raises(ValueError, match="unknown operation"):
        parse_mix("deposit=1,steal=5")
    with pytest.raises(ValueError, match="positive weight"):
        parse_mix("deposit=0")


def test_percentiles_are_nearest_rank() -> None:
    samples = sorted(float(n) for n in range(1, 101))
    assert percentile(samples, 0.50) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile(samples, 1.0) == 100.0
    assert percentile([], 0.99) == 0.0
    stats = RunStats(["deposit"])
    for n in range(10):
        stats.record("deposit", float(n), "OK" if n else "FAILED_PRECONDITION")
    summary = stats.summary(elapsed_s=2.0)["deposit"]
    assert summary["count"] == 10 and summary["per_second"] == 5.0
    assert summary["outcomes"] == {"FAILED_PRECONDITION": 1, "OK": 9}
    assert stats.errors == 1


def _ledger(config: LoadConfig) -> Ledger:
    ledger = Ledger()
    for index in range(config.wallets):
        wallet = config.wallet_id(index)
        ledger.acked[f"{wallet}:fund"] = Op("fund", f"{wallet}:fund", wallet, 1000)
    a, b = config.wallet_id(0), config.wallet_id(1)
    ledger.acked["d1"] = Op("deposit", "d1", a, 50)
    ledger.acked["w1"] = Op("withdraw", "w1", b, 30)
    ledger.transfers["t1"] = (Op("transfer", "t", a, 100, b), "COMPLETED")
    ledger.transfers["t2"] = (Op("transfer", "u", b, 7, a), "COMPENSATED")
    return ledger


def test_the_expected_wallets_follow_acknowledged_writes_and_completed_transfers() -> None:
    config = LoadConfig(wallets=2, run_id="unit")
    expected = _ledger(config).expected_wallets(config)
    a, b = expected[config.wallet_id(0)], expected[config.wallet_id(1)]
    assert a["balance"] == 1000 + 50 - 100
    assert b["balance"] == 1000 - 30 + 100
    assert a["deposit_count"] == 2 and a["total_deposited"] == 1050
    assert a["transfer_out_count"] == 1 and b["total_transferred_in"] == 100
    assert b["withdrawal_count"] == 1 and b["total_withdrawn"] == 30


def _results(**problems: list[Row]) -> dict[str, CheckResult]:
    """Every shared check's result, clean except the ones given offending rows."""
    results = {}
    for name in CHECKS:
        result = CheckResult(name, "")
        for row in problems.get(name, []):
            result.add(row, limit=20)
        results[name] = result
    results["conservation"].facts["USD"] = {
        "balances": 10, "deposits": 10, "withdrawals": 0, "in_flight": 0,
    }  # fmt: skip
    results["balance_equals_event_sum"].facts["wallets"] = 1
    results["holds_match_events"].facts["holds"] = {}
    results["transfers_net_zero"].facts["transfers"] = {}
    return results


def test_check_log_groups_the_shared_checks_under_the_bench_verdicts() -> None:
    config = LoadConfig(wallets=1, run_id="gap")
    wallet = config.wallet_id(0)
    ledger = Ledger()
    ledger.acked[f"{wallet}:fund"] = Op("fund", f"{wallet}:fund", wallet, 1000)
    ledger.acked["r2"] = Op("deposit", "r2", wallet, 10)
    clean = LogSnapshot(_results(), {wallet: 1010}, Counter({"r2": 1, f"{wallet}:fund": 1}))
    checks = {c.name: c for c in check_log(clean, ledger, config)}
    assert all(check.ok for check in checks.values()), checks
    assert checks["conservation"].detail.startswith("1 wallets: USD: balances 10")

    gap: Row = {"wallet_id": wallet, "events": 2, "first_sequence": 1, "last_sequence": 3}
    lost: Row = {"event_id": "e1", "wallet_id": wallet, "sequence": 1, "type": "wallet_created"}
    broken = LogSnapshot(
        _results(sequences_gap_free=[gap], outbox_row_per_event=[lost]),
        {wallet: 1010},
        Counter({"r2": 2, f"{wallet}:fund": 1}),
    )
    verdict = {c.name: c for c in check_log(broken, ledger, config)}
    assert not verdict["conservation"].ok
    assert verdict["conservation"].examples == [
        f"sequences_gap_free: wallet_id={wallet}  events=2  first_sequence=1  last_sequence=3"
    ]
    assert not verdict["outbox_complete"].ok
    assert not verdict["applied_once"].ok  # r2 twice in the log
    assert {name for name, c in verdict.items() if not c.ok} == {
        "conservation",
        "outbox_complete",
        "applied_once",
    }


def test_a_replay_must_return_the_stored_outcome() -> None:
    op = Op("deposit", "r", "w", 5)
    first = wallet_pb2.DepositResponse(
        wallet=wallet_pb2.Wallet(balance=5), event=wallet_pb2.WalletEvent(event_id="e1")
    )
    same = wallet_pb2.DepositResponse(
        wallet=wallet_pb2.Wallet(balance=5),
        event=wallet_pb2.WalletEvent(event_id="e1"),
        replayed=True,
    )
    assert _replay_problem(op, first, same) == ""
    assert "replayed" in _replay_problem(op, first, first)
    other = wallet_pb2.DepositResponse(
        wallet=wallet_pb2.Wallet(balance=10),
        event=wallet_pb2.WalletEvent(event_id="e2"),
        replayed=True,
    )
    assert "another event" in _replay_problem(op, first, other)
    import grpc

    code = grpc.StatusCode.FAILED_PRECONDITION
    assert _replay_problem(op, code, code) == ""
    assert "replay OK" in _replay_problem(op, code, same)
    transfer = Op("transfer", "t", "a", 5, "b")
    done = transfer_pb2.CreateTransferResponse(
        transfer=transfer_pb2.Transfer(transfer_id="x", state=transfer_pb2.TRANSFER_STATE_COMPLETED)
    )
    again = transfer_pb2.CreateTransferResponse(transfer=done.transfer, replayed=True)
    assert _replay_problem(transfer, done, again) == ""
    moved = transfer_pb2.CreateTransferResponse(
        transfer=transfer_pb2.Transfer(transfer_id="y"), replayed=True
    )
    assert "another transfer" in _replay_problem(transfer, done, moved)


def test_verdicts_compare_against_the_issue_targets() -> None:
    from wallet_bench.baseline import PgbenchResult

    baselines = {
        "deposit": PgbenchResult("deposit", 10_000.0, 3.0, 1, 0, "pgbench"),
        "transfer": PgbenchResult("transfer", 4_000.0, 7.0, 1, 0, "pgbench"),
    }
    deposit = RunReport(
        load={"operations": {"deposit": {"per_second": 3_500.0, "p99_ms": 40.0}}},
        drain={"seconds": 1.0},
        lag={"analytics": {"p99_s": 0.5, "max_s": 0.9, "p50_s": 0.1, "events": 1}},
    )
    transfer = RunReport(
        load={
            "operations": {"transfer": {"per_second": 900.0, "p99_ms": 400.0}},
            "transfers_completed_per_second": 900.0,
        },
        drain={},
        lag={},
    )
    rows = verdicts(baselines, {"deposit": deposit, "transfer": transfer}, {"x": [120.0]})
    met = {row["target"]: row["met"] for row in rows}
    assert met["deposit ratio"] and met["deposit p99 ms"] and met["analytics lag p99 s"]
    assert not met["transfer ratio"] and not met["transfer p99 ms"]
    assert met["max RSS MB"] and met["drain s"]
    assert "MISS" in render_verdicts(rows)


def test_workers_need_a_fixed_port() -> None:
    assert listen_port("127.0.0.1:50051") == 50051
    assert listen_port("127.0.0.1:0") == 0
    assert listen_port("nonsense") == 0


def test_local_process_cpu_accounting_sees_a_named_process_working():
    """The suite's PostgreSQL/RabbitMQ columns: processes found by name, CPU grows."""
    import os
    from pathlib import Path

    from wallet_bench import procs

    own_name = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert os.getpid() in procs.pids_named((own_name,))
    assert procs.pids_named(("no-such-process-name",)) == []
    before = procs.server_cpu((own_name,))[os.getpid()]
    busy_before = procs.machine_busy_seconds()
    deadline = procs.cpu_seconds(os.getpid()) + 0.05
    while procs.cpu_seconds(os.getpid()) < deadline:
        sum(range(10_000))
    assert procs.server_cpu((own_name,))[os.getpid()] >= before + 0.05
    assert procs.machine_busy_seconds() - busy_before >= 0.04
