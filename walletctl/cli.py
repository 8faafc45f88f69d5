"""``walletctl``: the operator CLI of the wallet platform.

Thin by design: this module builds the argument parser from the command modules,
resolves the global options (flag, then ``WALLET_*`` environment variable, then
default), runs one handler and maps whatever went wrong to an exit code (see
``walletctl.exitcodes`` and ``docs/walletctl.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import grpc

from wallet_platform.config import OPTIONS, default_database_url
from walletctl import exitcodes, render
from walletctl.client import SERVICES, ClientConfig, CredentialsError
from walletctl.commands import (
    audit,
    bulk,
    db,
    dlq,
    insights,
    projections,
    reconcile_cmd,
    sagas,
    transfers,
    wallets,
)
from walletctl.context import Context, OperationFailedError, UnavailableError, UsageError

EPILOG = """\
exit codes: 0 ok; 1 operation refused/failed or drift found; 2 usage error (also a
server INVALID_ARGUMENT); 3 a server, the database or the broker is unavailable.
Each global option may also be given after the command. See docs/walletctl.md.
"""

_ENV = {option.name: option.env for option in OPTIONS}
SERVICE_TARGET_ENV = {service: f"WALLETCTL_{service.upper()}_TARGET" for service in SERVICES}


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command accepts (before or after the command words).

    On the command-level copies the defaults are suppressed, so an option given before
    the command is not overwritten by the command parser's default.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    group.add_argument(
        "--target",
        default=default(None),
        help=f"HOST:PORT of a wallet-stack [{_ENV['target']}; 127.0.0.1:50051]",
    )
    for service in SERVICES:
        group.add_argument(
            f"--{service}-target",
            dest=f"{service}_target",
            default=default(None),
            metavar="HOST:PORT",
            help=f"{service} service, when not at --target [{SERVICE_TARGET_ENV[service]}]",
        )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(None),
        metavar="SECONDS",
        help="deadline of each RPC [WALLETCTL_TIMEOUT; 10]",
    )
    group.add_argument(
        "--tls", action="store_true", default=default(False), help="TLS with the system CAs"
    )
    group.add_argument(
        "--tls-ca",
        default=default(None),
        metavar="PEM",
        help=f"CA that signed the server certificate; enables TLS [{_ENV['tls_ca']}]",
    )
    group.add_argument(
        "--tls-client-cert",
        default=default(None),
        metavar="PEM",
        help=f"client certificate for mutual TLS [{_ENV['tls_client_cert']}]",
    )
    group.add_argument(
        "--tls-client-key",
        default=default(None),
        metavar="PEM",
        help=f"client private key for mutual TLS [{_ENV['tls_client_key']}]",
    )
    group.add_argument(
        "--tls-server-name",
        default=default(None),
        metavar="NAME",
        help="expected server name when it differs from the target host",
    )
    group.add_argument(
        "--auth-token",
        default=default(None),
        metavar="TOKEN",
        help=f"sent as 'authorization: Bearer TOKEN' [{_ENV['auth_token']}]",
    )
    group.add_argument(
        "--database-url",
        default=default(None),
        metavar="URL",
        help=f"for audit, reconcile, projections [{_ENV['database_url']}]",
    )
    group.add_argument(
        "--amqp-url",
        default=default(None),
        metavar="URL",
        help=f"RabbitMQ, for dlq [{_ENV['amqp_url']}]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="walletctl",
        description="Operator CLI of the wallet platform: wallets, transfers, sagas, "
        "analytics and fraud, dead-letter queues, the audit trail and reconciliation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"walletctl {_version()}")
    add_global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    add_global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (
        wallets,
        transfers,
        bulk,
        sagas,
        insights,
        dlq,
        audit,
        projections,
        reconcile_cmd,
        db,
    ):
        module.register(sub, common)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wallet-platform")
    except PackageNotFoundError:
        return "unknown"


def _pick(flag: Any, env: Mapping[str, str], name: str, fallback: Any = "") -> Any:
    if flag not in (None, ""):
        return flag
    value = env.get(name, "")
    return value if value != "" else fallback


def resolve_config(args: argparse.Namespace, env: Mapping[str, str]) -> ClientConfig:
    timeout_raw = _pick(args.timeout, env, "WALLETCTL_TIMEOUT", 10.0)
    try:
        timeout = float(timeout_raw)
    except ValueError:
        raise UsageError(f"invalid timeout {timeout_raw!r}") from None
    if timeout <= 0:
        raise UsageError("--timeout must be > 0")
    return ClientConfig(
        target=_pick(args.target, env, _ENV["target"], "127.0.0.1:50051"),
        service_targets={
            service: _pick(getattr(args, f"{service}_target"), env, SERVICE_TARGET_ENV[service])
            for service in SERVICES
        },
        timeout=timeout,
        tls=bool(args.tls),
        tls_ca=_pick(args.tls_ca, env, _ENV["tls_ca"]),
        tls_client_cert=_pick(args.tls_client_cert, env, _ENV["tls_client_cert"]),
        tls_client_key=_pick(args.tls_client_key, env, _ENV["tls_client_key"]),
        tls_server_name=args.tls_server_name or "",
        auth_token=_pick(args.auth_token, env, _ENV["auth_token"]),
    )


def _report(ctx: Context | None, out: TextIO, err: TextIO, want_json: bool, **error: Any) -> None:
    error = {k: v for k, v in error.items() if v not in (None, "")}
    if ctx is not None and ctx.request_id:
        error["request_id"] = ctx.request_id
    if ctx is not None and ctx.audit_id:
        error["audit_id"] = ctx.audit_id
    if want_json:
        render.dump_json({"error": error}, out)
        return
    head = error.get("code", "error")
    reason = error.get("reason")
    text = f"{head}{f' ({reason})' if reason else ''}: {error.get('message', '')}"
    err.write(f"walletctl: {text}\n")
    if error.get("audit_id"):
        err.write(f"walletctl: audit id {error['audit_id']}\n")
    if ctx is not None and ctx.request_id and error.get("exit_code") == exitcodes.UNAVAILABLE:
        err.write(f"walletctl: retry safely with --request-id {ctx.request_id}\n")


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one command; return its exit code (the console script exits with it)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    env = os.environ if environ is None else environ
    parser = build_parser()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(argv)
        except SystemExit as stop:
            return exitcodes.USAGE if stop.code not in (0, None) else exitcodes.OK
    handler = getattr(args, "handler", None)
    if handler is None:
        # A command group without its sub-command: show what it offers.
        (getattr(args, "group_parser", None) or parser).print_help(err)
        return exitcodes.USAGE
    want_json = bool(args.json)
    ctx: Context | None = None
    try:
        config = resolve_config(args, env)
        ctx = Context(
            args=args,
            out=out,
            err=err,
            config=config,
            database_url=_pick(args.database_url, env, _ENV["database_url"], "")
            or default_database_url(),
            amqp_url=_pick(args.amqp_url, env, _ENV["amqp_url"]),
        )
        return int(handler(ctx, args))
    except grpc.RpcError as error:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        status = exitcodes.for_status(code)
        _report(
            ctx,
            out,
            err,
            want_json,
            code=code.name,
            reason=_safe_reason(error),
            message=error.details() if hasattr(error, "details") else str(error),
            exit_code=status,
        )
        return status
    except (UsageError, CredentialsError) as error:
        _report(
            ctx, out, err, want_json, code="USAGE", message=str(error), exit_code=exitcodes.USAGE
        )
        return exitcodes.USAGE
    except UnavailableError as error:
        _report(
            ctx,
            out,
            err,
            want_json,
            code="UNAVAILABLE",
            message=str(error),
            exit_code=exitcodes.UNAVAILABLE,
        )
        return exitcodes.UNAVAILABLE
    except OperationFailedError as error:
        _report(
            ctx, out, err, want_json, code="FAILED", message=str(error), exit_code=exitcodes.FAILED
        )
        return exitcodes.FAILED
    except Exception as error:
        if not type(error).__module__.startswith("sqlalchemy"):
            raise
        # A database error (audit, reconcile, projections): unreachable = 3, else 1.
        from wallet_platform.storage.connection_errors import is_connection_error

        orig = getattr(error, "orig", None)
        first_line = (str(orig if orig is not None else error).splitlines() or [""])[0]
        status = exitcodes.UNAVAILABLE if is_connection_error(error) else exitcodes.FAILED
        _report(
            ctx,
            out,
            err,
            want_json,
            code="UNAVAILABLE" if status == exitcodes.UNAVAILABLE else "DATABASE_ERROR",
            message=f"database: {first_line}",
            exit_code=status,
        )
        return status
    except KeyboardInterrupt:
        return 130
    finally:
        if ctx is not None:
            ctx.close()


def _safe_reason(error: grpc.RpcError) -> str | None:
    """The google.rpc ErrorInfo reason the server attached (e.g. INSUFFICIENT_FUNDS)."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(error)
    except Exception:
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
