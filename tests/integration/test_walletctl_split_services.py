"""walletctl against separate services: per-service targets, retrying and stuck sagas.

WalletService and the orchestrator run as two servers (as in production). The CLI
reaches each through its own target (``WALLETCTL_WALLET_TARGET`` /
``WALLETCTL_TRANSFER_TARGET``; ``--target`` points nowhere). A failpoint holds the saga
between its debit and its credit while WalletService is stopped, so the money is in
flight and the credit keeps failing: the summary lists the saga as retrying with its
last error, the dashboard counts it, reconcile accounts for the money in flight and
calls the saga stuck once it is older than ``--saga-max-age``. When WalletService is
back the saga completes and reconcile is clean again.
"""

from __future__ import annotations

from tests.eventually import eventually
from tests.integration.walletctl_harness import Result, walletctl
from wallet_platform import failpoints
from wallet_platform.config import Settings
from wallet_platform.server.process import RunningServer, start_server
from walletctl import exitcodes


async def _wallet_service(database_url: str, listen: str = "127.0.0.1:0") -> RunningServer:
    from wallet_service import bootstrap

    settings = Settings(database_url=database_url, listen=listen, log_format="console")
    return await start_server(settings, bootstrap.build_components, role="wallet-service")


async def test_per_service_targets_retrying_and_stuck_sagas(tmp_path) -> None:
    from saga_orchestrator import bootstrap as saga_bootstrap

    database_url = f"sqlite:///{tmp_path / 'wallet.db'}"
    wallet = await _wallet_service(database_url)
    wallet_target = wallet.target
    saga_settings = Settings(
        database_url=database_url,
        listen="127.0.0.1:0",
        log_format="console",
        wallet_service_target=wallet_target,
        transfer_wait_ms=300,
        saga_retry_max_ms=300,
        saga_step_deadline_ms=500,
        failpoints="saga.before_credit=sleep(3000)",
    )
    saga = await start_server(saga_settings, saga_bootstrap.build_components, role="saga")

    async def ctl(*args: str) -> Result:
        env = {"WALLETCTL_WALLET_TARGET": wallet_target, "WALLETCTL_TRANSFER_TARGET": saga.target}
        return await walletctl(*args, target="127.0.0.1:1", database_url=database_url, env=env)

    try:
        for wallet_id in ("s-a", "s-b"):
            assert (
                await ctl("wallets", "create", "--currency", "USD", "--wallet-id", wallet_id)
            ).code == 0
        assert (await ctl("wallets", "deposit", "s-a", "100")).code == 0

        started = await ctl("transfers", "create", "s-a", "s-b", "60", "--wait", "0", "--json")
        assert started.code == exitcodes.OK, started  # accepted, still in flight
        transfer_id = started.json["transfer"]["transfer_id"]
        assert started.json["transfer"]["state"] in ("PENDING", "DEBITED")
        await wallet.stop(grace=0.2)  # while the saga sleeps before its credit
        assert (await ctl("wallets", "show", "s-a")).code == exitcodes.UNAVAILABLE

        async def summary_json() -> dict:
            return (await ctl("transfers", "summary", "--json")).json

        summary = await eventually(
            summary_json, lambda s: s["retrying"], what="a retrying saga", within=20, interval=0.2
        )
        assert (
            summary["unfinished"] == 1 and summary["oldest_unfinished_transfer_id"] == transfer_id
        )
        retrying = summary["retrying"][0]
        assert retrying["transfer_id"] == transfer_id and retrying["state"] == "DEBITED"
        assert retrying["last_error"]
        text = await ctl("transfers", "summary")
        assert "retrying:" in text.out and transfer_id in text.out
        once = await ctl("sagas", "watch", "--once")
        assert "unfinished: 1" in once.out and "oldest unfinished: " + transfer_id in once.out

        stuck = await ctl("reconcile", "--saga-max-age", "0", "--json")
        assert stuck.code == exitcodes.FAILED
        failing = [c["name"] for c in stuck.json["checks"] if not c["ok"]]
        assert "sagas_finished" in failing
        assert stuck.json["checks"][0]["ok"]  # the ledger itself is fine
        fine = await ctl("reconcile", "--json")  # young enough: not stuck yet
        assert fine.code == exitcodes.OK
        conservation = next(c for c in fine.json["checks"] if c["name"] == "conservation")
        assert conservation["facts"]["USD"] == {
            "balances": 40, "deposits": 100, "withdrawals": 0, "in_flight": 60,
        }  # fmt: skip

        # WalletService back on the same address: the saga finishes by itself
        wallet = await _wallet_service(database_url, listen=wallet_target)
        shown = await eventually(
            lambda: ctl("transfers", "show", transfer_id, "--json"),
            lambda shown: shown.json["transfer"]["state"] == "COMPLETED",
            what=f"transfer {transfer_id} completed",
            within=30,
            interval=0.2,
        )
        credit = next(s for s in shown.json["transfer"]["steps"] if s["name"] == "credit")
        assert credit["attempts"] >= 2
        assert (await ctl("reconcile", "--saga-max-age", "0")).code == exitcodes.OK
    finally:
        await saga.stop(grace=0.5)
        await wallet.stop(grace=0.5)
        failpoints.configure("")  # process-wide: leave none behind for other tests
