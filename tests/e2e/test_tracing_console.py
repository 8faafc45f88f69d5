"""A real ``wallet-stack`` traced by the standard variables alone.

``OTEL_TRACES_EXPORTER=console`` and ``OTEL_SERVICE_NAME`` in the environment, a call
through grpcurl with a ``traceparent`` header, then SIGTERM: the spans buffered by the
exporter are written on the way out, and the server span continues the caller's trace
under the configured service name.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.stack_process import BIN, free_port, stack_env, wait_serving

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def console_spans(text: str) -> list[dict]:
    """The JSON objects the console exporter printed (other lines skipped)."""
    decoder = json.JSONDecoder()
    spans, position = [], 0
    while (start := text.find("{", position)) != -1:
        span, position = decoder.raw_decode(text, start)
        spans.append(span)
    return spans


def test_console_exporter_prints_the_callers_trace(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {
        **stack_env(tmp_path),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "wallet-e2e",
    }
    with (tmp_path / "spans.out").open("wb") as out:
        stack = subprocess.Popen(
            [str(BIN / "wallet-stack"), "--listen", address],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    try:
        wait_serving(address, stack)
        call = subprocess.run(
            [
                str(BIN / "grpcurl"),
                "-plaintext",
                "-H",
                f"traceparent: 00-{TRACE_ID}-{CLIENT_SPAN}-01",
                "-d",
                '{"wallet_id":"traced","currency":"USD","request_id":"r1"}',
                address,
                "wallet.v1.WalletService/CreateWallet",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert call.returncode == 0, call.stderr
    finally:
        stack.terminate()
        assert stack.wait(timeout=30) == 0
    spans = console_spans((tmp_path / "spans.out").read_text())
    (served,) = [
        s
        for s in spans
        if s["name"] == "wallet.v1.WalletService/CreateWallet"
        and s["context"]["trace_id"] == f"0x{TRACE_ID}"
    ]
    assert served["parent_id"] == f"0x{CLIENT_SPAN}"
    assert served["kind"] == "SpanKind.SERVER"
    assert served["resource"]["attributes"]["service.name"] == "wallet-e2e"
    assert served["attributes"]["rpc.grpc.status_code"] == 0
