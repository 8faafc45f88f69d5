"""Tracing's set-up from the standard OTEL_* variables, and the propagation helpers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from wallet_platform.observability import tracing

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def tracing_off_after() -> Iterator[None]:
    yield
    tracing.shutdown()
    assert not tracing.enabled()


@pytest.mark.parametrize("value", [None, "", "none", "NONE"])
def test_unset_or_none_leaves_tracing_off(value: str | None) -> None:
    environ = {} if value is None else {"OTEL_TRACES_EXPORTER": value}
    assert tracing.setup_from_env("wallet-service", environ) is False
    assert not tracing.enabled()
    # Off: the helpers do nothing and cost a global check.
    assert tracing.current_traceparent() is None
    assert tracing.outgoing_metadata((("a", "b"),)) == (("a", "b"),)
    assert tracing.start_span("x") is None
    with tracing.span("x") as span:
        assert span is None


def test_otel_sdk_disabled_wins() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert tracing.setup_from_env("stack", environ) is False
    assert not tracing.enabled()


def test_console_turns_tracing_on_with_the_service_name() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "payments-eu"}
    assert tracing.setup_from_env("wallet-service", environ)
    assert tracing.enabled()
    provider = tracing._provider
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "payments-eu"
    with tracing.span("x") as span:
        assert span is not None
        traceparent = tracing.current_traceparent()
    assert traceparent is not None
    assert traceparent.split("-")[1] == format(span.get_span_context().trace_id, "032x")


def test_the_role_names_the_service_by_default() -> None:
    tracing.setup_from_env("saga-orchestrator", {"OTEL_TRACES_EXPORTER": "console"})
    provider = tracing._provider
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "saga-orchestrator"


def test_the_sampler_comes_from_otel_traces_sampler(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tracing.setup_from_env("stack", {"OTEL_TRACES_EXPORTER": "console"})
    provider = tracing._provider
    assert provider is not None and provider.sampler is ALWAYS_OFF
    with tracing.span("x", parent=VALID, use_parent=True) as span:
        assert span is not None and not span.is_recording()


def test_exporters_by_name(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert isinstance(tracing.exporter_from_env({"OTEL_TRACES_EXPORTER": "otlp"}), OTLPSpanExporter)
    assert isinstance(
        tracing.exporter_from_env({"OTEL_TRACES_EXPORTER": "console"}), ConsoleSpanExporter
    )


def test_an_unknown_exporter_refuses_to_start() -> None:
    with pytest.raises(SystemExit, match="jaeger"):
        tracing.setup_from_env("stack", {"OTEL_TRACES_EXPORTER": "jaeger"})
    assert not tracing.enabled()


@pytest.mark.parametrize(
    "garbled",
    [
        "",
        "garbage",
        b"\xff\xfe",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    ],
)
def test_a_garbled_traceparent_names_no_parent(garbled: str | bytes) -> None:
    assert tracing.context_from(garbled) is None


def test_a_valid_traceparent_is_continued() -> None:
    assert tracing.context_from(VALID) is not None
    assert tracing.context_from(VALID.encode()) is not None
    tracing.setup_from_env("stack", {"OTEL_TRACES_EXPORTER": "console"})
    with tracing.span("child", parent=VALID, use_parent=True) as span:
        assert span is not None  # tracing is on
        context = span.get_span_context()
        assert format(context.trace_id, "032x") == VALID.split("-")[1]
    with tracing.span("root", parent="garbage", use_parent=True) as span:
        assert span is not None
        assert format(span.get_span_context().trace_id, "032x") != VALID.split("-")[1]


def test_log_lines_inside_a_span_carry_its_trace_and_span_ids() -> None:
    import json
    import logging

    from wallet_platform.observability.logs import JsonFormatter

    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": "inside"})
    formatter = JsonFormatter()
    assert "trace_id" not in json.loads(formatter.format(record))  # tracing off
    tracing.setup_from_env("stack", {"OTEL_TRACES_EXPORTER": "console"})
    with tracing.span("child", parent=VALID, use_parent=True) as span:
        assert span is not None
        line = json.loads(formatter.format(record))
        assert line["trace_id"] == VALID.split("-")[1]
        assert line["span_id"] == format(span.get_span_context().span_id, "016x")
    assert "trace_id" not in json.loads(formatter.format(record))  # outside every span
    tracing.shutdown()
    assert "trace_id" not in json.loads(formatter.format(record))  # tracing off again
