"""``--workers N``: N server processes behind one port, stopped together by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_bench.procs import descendants, free_port

pytestmark = pytest.mark.slow


def _serving(target: str, timeout_s: float = 60.0) -> None:
    give_up = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < give_up, "server never became healthy"
            time.sleep(0.2)


def test_two_workers_share_one_port_and_stop_together(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "WALLET_DATABASE_URL": f"sqlite:///{tmp_path / 'wallet.db'}",
        "WALLET_AMQP_URL": "",
        "WALLET_LOG_LEVEL": "WARNING",
    }
    bin_dir = Path(sys.executable).parent
    process = subprocess.Popen(
        [str(bin_dir / "wallet-service"), "--listen", f"127.0.0.1:{port}", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _serving(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while len(descendants(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = descendants(process.pid)
        assert len(workers) == 2
        # Several connections (the kernel spreads connections) all get answers.
        for index in range(6):
            options = [("test.connection", index), ("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
                stub = wallet_pb2_grpc.WalletServiceStub(ch)
                reply = stub.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        wallet_id=f"w{index}", currency="USD", request_id=f"c{index}"
                    ),
                    timeout=30,
                )
                assert reply.wallet.wallet_id == f"w{index}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_workers_refuse_port_zero(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [str(bin_dir / "wallet-service"), "--listen", "127.0.0.1:0", "--workers", "2"],
        env={**os.environ, "WALLET_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "fixed port" in done.stderr
