"""The Compose deployment's secrets, generated and used for real (no Docker here).

``deploy/compose/init-secrets.sh`` runs with the machine's openssl into a temporary
directory, exactly as the one-shot ``secrets`` service runs it into its volume. Then
the platform's processes start the way the Compose file starts them: through
``deploy/compose/with-secrets.sh``, with the Compose file's own environment for each
service (TLS paths, token tables), against a real database. What must hold: the
migration job migrates; the servers speak TLS only and demand a token; the app token
writes but cannot call the saga steps; the orchestrator's token drives transfers on
WalletService and is worth nothing anywhere else; the admin token freezes wallets.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from tests.integration.walletctl_harness import walletctl
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform.channels import make_channel
from wallet_platform.config import Settings
from wallet_platform.server.grants import ADMIN, ORCHESTRATOR, WRITER
from wallet_platform.server.security import parse_tokens
from walletctl import exitcodes

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
INIT = ROOT / "deploy" / "compose" / "init-secrets.sh"
WRAPPER = ROOT / "deploy" / "compose" / "with-secrets.sh"
SECRETS_MOUNT = "/run/wallet-secrets"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

TOKEN_FILES = ("admin.token", "app.token", "orchestrator.token")
PASSWORD_FILES = ("postgres-password", "rabbitmq-password", "grafana-admin-password")


def _init(secrets: Path, ca: Path) -> str:
    result = subprocess.run(
        ["sh", str(INIT)],
        env={**_clean_env(), "SECRETS_DIR": str(secrets), "CA_DIR": str(ca)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _clean_env() -> dict[str, str]:
    """This machine's environment without any WALLET_* setting of the developer's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WALLET")}


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def secrets(tmp_path: Path) -> tuple[Path, Path]:
    directory, ca = tmp_path / "secrets", tmp_path / "ca"
    _init(directory, ca)
    return directory, ca


def test_init_generates_every_secret_private_and_random(secrets: tuple[Path, Path]) -> None:
    directory, ca = secrets
    for name in (*TOKEN_FILES, *PASSWORD_FILES, "database-url", "amqp-url", "server.key"):
        mode = stat.S_IMODE((directory / name).stat().st_mode)
        assert mode == 0o400, (name, oct(mode))
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o400
    assert not (directory / "ca.key").exists()  # the signing key never reaches the services
    values = [(directory / name).read_text() for name in (*TOKEN_FILES, *PASSWORD_FILES)]
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in values), values
    assert len(set(values)) == len(values)

    admin, app, orchestrator = ((directory / n).read_text() for n in TOKEN_FILES)
    wallet_table = parse_tokens((directory / "wallet-service.auth").read_text())
    assert {t: p.roles for t, p in wallet_table.items()} == {
        admin: {ADMIN},
        app: {WRITER},
        orchestrator: {ORCHESTRATOR},
    }
    other_table = parse_tokens((directory / "services.auth").read_text())
    assert set(other_table) == {admin, app}  # the orchestrator's token is for WalletService only
    password = (directory / "postgres-password").read_text()
    assert (directory / "database-url").read_text() == (
        f"postgresql+psycopg://wallet:{password}@postgres:5432/wallet"
    )
    rabbit = (directory / "rabbitmq-password").read_text()
    assert (directory / "amqp-url").read_text() == f"amqp://wallet:{rabbit}@rabbitmq:5672/"

    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", directory / "ca.crt", directory / "server.crt"],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", directory / "server.crt"],
        capture_output=True,
        text=True,
    ).stdout
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("wallet-service", "saga-orchestrator", "analytics-worker", "fraud-worker"):
        assert name in services and f"DNS:{name}" in text
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text


def test_init_keeps_what_exists_and_renews_what_expires(secrets: tuple[Path, Path]) -> None:
    directory, ca = secrets
    first = _contents(directory)
    _init(directory, ca)
    assert _contents(directory) == first  # a restart changes nothing

    (directory / "server.crt").unlink()
    _init(directory, ca)
    second = _contents(directory)
    assert second["server.crt"] != first["server.crt"]
    assert {k: v for k, v in second.items() if not k.startswith("server.")} == {
        k: v for k, v in first.items() if not k.startswith("server.")
    }

    # A certificate that expires tomorrow is replaced by one valid for months.
    (directory / "server.crt").chmod(0o644)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", "/CN=short", "-keyout", str(ca / "short.key"),
            "-out", str(directory / "server.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert "issued" in _init(directory, ca)
    renewed = subprocess.run(
        [
            "openssl",
            "x509",
            "-checkend",
            str(300 * 86400),
            "-noout",
            "-in",
            directory / "server.crt",
        ],
        capture_output=True,
    )
    assert renewed.returncode == 0
    assert _contents(directory)["admin.token"] == first["admin.token"]


# --- the services, started the way the Compose file starts them -----------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _interpolate(value: str) -> str:
    """``${NAME:-default}`` as Compose reads it with NAME unset (the defaults shipped)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def _compose_env(service: str, secrets: Path) -> dict[str, str]:
    """The service's environment from the Compose file, its paths moved to ``secrets``."""
    declared = yaml.safe_load(COMPOSE.read_text())["services"][service].get("environment", {})
    env = {
        k: _interpolate(str(v)).replace(SECRETS_MOUNT, str(secrets)) for k, v in declared.items()
    }
    env["WALLET_LOG_FORMAT"] = "console"
    env.pop("WALLET_METRICS_PORT", None)
    return {
        **_clean_env(),
        **env,
        "SECRETS_DIR": str(secrets),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def _run_via_wrapper(
    service: str, secrets: Path, command: list[str], **extra: str
) -> subprocess.Popen[str]:
    env = {**_compose_env(service, secrets), **extra}
    return subprocess.Popen(
        ["sh", str(WRAPPER), *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_serving(target: str, ca: Path, process: subprocess.Popen[str]) -> None:
    env = {**_clean_env(), "WALLET_TLS_CA": str(ca)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        probe = subprocess.run(
            [sys.executable, "-m", "wallet_platform.server.healthcheck", target, "--timeout", "1"],
            env=env,
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError(f"{target} never became SERVING")


@pytest.fixture
def platform(
    secrets: tuple[Path, Path], empty_database_url: str
) -> Iterator[tuple[Path, int, int]]:
    directory, _ = secrets
    # Point the generated URLs at the test's database and the in-process bus.
    for name, value in (("database-url", empty_database_url), ("amqp-url", "")):
        (directory / name).chmod(0o600)
        (directory / name).write_text(value)
    migrate = _run_via_wrapper("migrate", directory, ["walletctl", "db", "upgrade"])
    output, _ = migrate.communicate(timeout=120)
    assert migrate.returncode == 0 and "now at" in output, output

    wallet_port, saga_port = _free_port(), _free_port()
    wallet = _run_via_wrapper(
        "wallet-service", directory, ["wallet-service"], WALLET_LISTEN=f"127.0.0.1:{wallet_port}"
    )
    saga = _run_via_wrapper(
        "saga-orchestrator",
        directory,
        ["saga-orchestrator"],
        WALLET_LISTEN=f"127.0.0.1:{saga_port}",
        WALLET_SERVICE_TARGET=f"localhost:{wallet_port}",
    )
    try:
        _wait_serving(f"127.0.0.1:{wallet_port}", directory / "ca.crt", wallet)
        _wait_serving(f"127.0.0.1:{saga_port}", directory / "ca.crt", saga)
        yield directory, wallet_port, saga_port
    finally:
        for process in (saga, wallet):
            process.terminate()
            process.communicate(timeout=30)


async def test_services_demand_tls_and_the_right_token(platform: tuple[Path, int, int]) -> None:
    directory, wallet_port, saga_port = platform
    tokens = {n.split(".")[0]: (directory / n).read_text() for n in TOKEN_FILES}

    async def ctl(token: str, *args: str, tls: bool = True):
        env = {
            "WALLETCTL_WALLET_TARGET": f"localhost:{wallet_port}",
            "WALLETCTL_TRANSFER_TARGET": f"localhost:{saga_port}",
            "WALLETCTL_TIMEOUT": "5",
        }
        if tls:
            env["WALLET_TLS_CA"] = str(directory / "ca.crt")
        if token:
            env["WALLET_AUTH_TOKEN"] = token
        return await walletctl(*args, "--json", target="127.0.0.1:1", env=env)

    plaintext = await ctl(tokens["app"], "wallets", "show", "nobody", tls=False)
    assert plaintext.code == exitcodes.UNAVAILABLE
    anonymous = await ctl("", "wallets", "show", "nobody")
    assert anonymous.code == exitcodes.FAILED and "UNAUTHENTICATED" in anonymous.out
    orchestrator_elsewhere = await ctl(tokens["orchestrator"], "transfers", "list")
    assert "UNAUTHENTICATED" in orchestrator_elsewhere.out

    app = tokens["app"]
    for wallet_id in ("c-a", "c-b"):
        created = await ctl(app, "wallets", "create", "--currency", "USD", "--wallet-id", wallet_id)
        assert created.code == 0, created
    assert (await ctl(app, "wallets", "deposit", "c-a", "500")).code == 0
    # The orchestrator reaches WalletService over TLS with its own token: the saga completes.
    moved = await ctl(app, "transfers", "create", "c-a", "c-b", "200")
    assert moved.code == 0 and moved.json["transfer"]["state"] == "COMPLETED", moved

    refused = await ctl(app, "wallets", "freeze", "c-b")
    assert refused.code == exitcodes.FAILED and "PERMISSION_DENIED" in refused.out
    frozen = await ctl(tokens["admin"], "wallets", "freeze", "c-b")
    assert frozen.code == 0, frozen

    # Only the orchestrator's token may call the saga steps on WalletService.
    settings = Settings(tls_ca=str(directory / "ca.crt"), auth_token=app)
    async with make_channel(f"localhost:{wallet_port}", settings) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.DebitForTransfer(wallet_pb2.DebitForTransferRequest(), timeout=5)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
