"""walletctl without a platform: help, usage errors, exit codes, option resolution."""

from __future__ import annotations

import argparse
import io
import socket

import pytest

from walletctl import exitcodes
from walletctl.cli import build_parser, main, resolve_config


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {})
    return code, out.getvalue(), err.getvalue()


def command_paths() -> list[list[str]]:
    """Every runnable command, e.g. ["wallets", "deposit"], found by walking the parser."""
    paths: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            paths.append(prefix)
            return
        for name, child in subs[0].choices.items():
            walk(child, [*prefix, name])

    walk(build_parser(), [])
    return paths


def test_every_command_has_help() -> None:
    paths = command_paths()
    expected = {
        "wallets create", "wallets show", "wallets history", "wallets balance-at",
        "wallets freeze", "wallets unfreeze", "wallets deposit", "wallets withdraw",
        "transfers create", "transfers show", "transfers list", "transfers summary",
        "sagas watch", "stats", "alerts", "dlq list", "dlq show", "dlq replay", "dlq purge",
        "audit", "projections rebuild", "projections check", "reconcile",
        "db upgrade", "db current", "db history",
    }  # fmt: skip
    assert expected <= {" ".join(p) for p in paths}
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("walletctl ")
    for path in paths:
        code, out, _ = run(*path, "--help")
        assert code == 0, path
        assert "usage: walletctl" in out and "--json" in out, path


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["wallets"],
        ["wallets", "deposit", "w1"],
        ["wallets", "deposit", "w1", "1.50"],
        ["wallets", "withdraw", "w1", "-5"],
        ["wallets", "balance-at", "w1"],
        ["wallets", "balance-at", "w1", "--time", "yesterday"],
        ["transfers", "list", "--state", "LOST"],
        ["reconcile", "--check", "no_such_check"],
        ["dlq", "purge", "analytics"],
        ["--tls-ca", "/nonexistent/ca.pem", "wallets", "show", "w1"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    code, _, _ = run(*argv, "--database-url", "sqlite:////nonexistent/x.db")
    assert code == exitcodes.USAGE


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_server_down_exits_3_and_keeps_the_request_id() -> None:
    target = f"127.0.0.1:{_closed_port()}"
    code, out, err = run("--target", target, "--timeout", "2", "wallets", "show", "w1")
    assert code == exitcodes.UNAVAILABLE
    assert "UNAVAILABLE" in err
    code, out, err = run(
        "wallets", "deposit", "w1", "5", "--request-id", "r-1", "--json",
        env={"WALLET_TARGET": target, "WALLETCTL_TIMEOUT": "2"},
    )  # fmt: skip
    assert code == exitcodes.UNAVAILABLE
    error = __import__("json").loads(out)["error"]
    assert error["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert error["request_id"] == "r-1"


def test_database_errors_exit_codes(tmp_path) -> None:
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    assert run("reconcile", "--database-url", missing)[0] == exitcodes.USAGE
    assert run("audit", "--database-url", missing)[0] == exitcodes.USAGE
    unreachable = "postgresql+psycopg://root@127.0.0.1:1/nowhere"
    code, _, err = run("reconcile", "--database-url", unreachable)
    assert code == exitcodes.UNAVAILABLE, err


def test_options_come_from_flags_then_environment_then_defaults() -> None:
    parser = build_parser()
    env = {
        "WALLET_TARGET": "stack:1",
        "WALLETCTL_FRAUD_TARGET": "fraud:4",
        "WALLET_AUTH_TOKEN": "secret",
        "WALLET_TLS_CA": "/ca.pem",
    }
    config = resolve_config(parser.parse_args(["stats", "w"]), env)
    assert config.target_for("wallet") == "stack:1"
    assert config.target_for("fraud") == "fraud:4"
    assert config.metadata == (("authorization", "Bearer secret"),)
    assert config.secure and config.timeout == 10.0
    # Flags win, before or after the command words.
    args = parser.parse_args(["--target", "a:1", "stats", "w", "--timeout", "3"])
    config = resolve_config(args, env)
    assert config.target_for("analytics") == "a:1" and config.timeout == 3.0
    args = parser.parse_args(["stats", "w", "--target", "b:2", "--analytics-target", "c:3"])
    config = resolve_config(args, {})
    assert config.target_for("wallet") == "b:2" and config.target_for("analytics") == "c:3"
    assert config.metadata == () and not config.secure
