"""OpenTelemetry tracing: set up from the standard variables, and the few helpers the
platform's transports use. The only module that imports OpenTelemetry.

Configuration (read once per process, by ``setup_from_env``):

- ``OTEL_TRACES_EXPORTER``: ``otlp`` (gRPC, to ``OTEL_EXPORTER_OTLP_ENDPOINT``,
  default ``http://localhost:4317``), ``console`` (spans as JSON on stdout) or
  ``none``. Unset or ``none`` leaves tracing off (so does ``OTEL_SDK_DISABLED=true``).
- ``OTEL_SERVICE_NAME``: the ``service.name`` of the spans (default: the process's
  role, e.g. ``wallet-service``).
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the SDK's samplers (default
  ``parentbased_always_on``).

Tracing off costs next to nothing: no provider, no interceptor, and every helper
checks one module global first (``span`` hands back a shared null context,
``current_traceparent`` returns None, so no header and no column value is written).

Propagation is W3C trace context, always (the ``traceparent`` value alone; no
baggage): gRPC metadata ``traceparent`` in and out, the ``traceparent`` column of
``outbox`` rows, sagas and in-process bus messages, and the AMQP header
``traceparent``. A value that does not parse is ignored: the span starts a new trace.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from wallet_platform.observability import logs

log = logging.getLogger(__name__)

HEADER = "traceparent"  # gRPC metadata key, AMQP header and column name
EXPORTERS = ("otlp", "console", "none")
# The standard variables the platform documents (docs/operations.md, Tracing); the
# SDK and the OTLP exporter read more of their own.
VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
)
INSTRUMENTATION = "wallet_platform"

# Re-exported so transports say what kind of span they start without importing OTel.
SERVER = SpanKind.SERVER
CLIENT = SpanKind.CLIENT
PRODUCER = SpanKind.PRODUCER
CONSUMER = SpanKind.CONSUMER
INTERNAL = SpanKind.INTERNAL

_PROPAGATOR = TraceContextTextMapPropagator()
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()

# Tracing is on exactly when _tracer is set.
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def enabled() -> bool:
    return _tracer is not None


def exporter_from_env(environ: Mapping[str, str]) -> SpanExporter | None:
    """The exporter ``OTEL_TRACES_EXPORTER`` names; None for unset or ``none``.

    An unknown name refuses to start: a typo must not silently turn tracing off.
    """
    name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if name in ("", "none"):
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        # Imported here: the OTLP exporter pulls in its own gRPC stubs, only needed
        # when used. It reads OTEL_EXPORTER_OTLP_ENDPOINT (and _HEADERS, _INSECURE...).
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise SystemExit(
        f"OTEL_TRACES_EXPORTER={name!r} is not supported; use one of {', '.join(EXPORTERS)}"
    )


def setup_from_env(default_service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on as the ``OTEL_*`` variables say (once per process); True if on.

    A process that already has tracing set up (a test that installed its own
    provider, a second server in one process) keeps it.
    """
    if _tracer is not None:
        return True
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False  # the standard switch that turns the whole SDK off
    exporter = exporter_from_env(env)
    if exporter is None:
        return False
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; attributes given here win
    # over it, so the role is only the fallback. TracerProvider reads
    # OTEL_TRACES_SAMPLER(_ARG).
    service_name = env.get("OTEL_SERVICE_NAME", "").strip()
    if not service_name and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        service_name = default_service_name
    attributes = {SERVICE_NAME: service_name} if service_name else {}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    log.info(
        "tracing on: exporter %s, service %s",
        env.get("OTEL_TRACES_EXPORTER"),
        provider.resource.attributes.get(SERVICE_NAME),
    )
    return True


def install(provider: TracerProvider | None) -> None:
    """Use ``provider`` for every span of this process (None: tracing off).

    The provider is kept here rather than set as OpenTelemetry's global one, which can
    be set only once per process: tests swap in an in-memory exporter and back.
    """
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION)
    if provider is not None:
        logs.add_context_source(log_ids)


def log_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span for log lines (none outside one)."""
    if _tracer is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def shutdown() -> None:
    """Export what is buffered and stop (process exit)."""
    provider = _provider
    install(None)
    if provider is not None:
        provider.shutdown()


# --- propagation -----------------------------------------------------------------------


def context_from(traceparent: str | bytes | None) -> Context | None:
    """The remote parent a ``traceparent`` value names; None when absent or garbled."""
    if not traceparent:
        return None
    if isinstance(traceparent, bytes):
        try:
            traceparent = traceparent.decode("ascii")
        except UnicodeDecodeError:
            return None
    context = _PROPAGATOR.extract({HEADER: traceparent})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, to store or send; None when tracing is
    off or there is no sampled-or-not valid span."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(HEADER)


def traceparent_of(span: Span | None) -> str | None:
    """The ``traceparent`` naming ``span`` as the parent (None for no span)."""
    if span is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(HEADER)


def outgoing_metadata(metadata: Any) -> Any:
    """gRPC call metadata plus the current ``traceparent`` (unchanged when off)."""
    traceparent = current_traceparent()
    if traceparent is None:
        return metadata
    return (*(metadata or ()), (HEADER, traceparent))


# --- spans -----------------------------------------------------------------------------


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: str | bytes | None = None,
    use_parent: bool = False,
    attributes: Mapping[str, Any] | None = None,
    record_errors: bool = True,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span made current for the block (a shared null context when tracing is off).

    The parent is the current span, or with ``use_parent`` the ``parent``
    traceparent (a new trace when it is missing or garbled): transports that carry a
    remote context always pass it, so an unrelated span that happens to be current
    (e.g. the task that spawned a consumer) never becomes the parent.
    Exceptions leaving the block are recorded and set the span's status to error
    (unless ``record_errors`` is False: the caller decides, e.g. by status code).
    """
    tracer = _tracer
    if tracer is None:
        return _OFF
    return _current_span(tracer, name, kind, parent, use_parent, attributes, record_errors)


@contextlib.contextmanager
def _current_span(
    tracer: Tracer,
    name: str,
    kind: SpanKind,
    parent: str | bytes | None,
    use_parent: bool,
    attributes: Mapping[str, Any] | None,
    record_errors: bool,
) -> Iterator[Span]:
    context = _parent_context(parent) if use_parent else None
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        record_exception=record_errors,
        set_status_on_exception=record_errors,
    ) as current:
        yield current


def start_span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: str | bytes | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Span | None:
    """A span that is not made current (the caller ends it): for work on many messages
    at once, e.g. one span per message of a relay batch. None when tracing is off."""
    tracer = _tracer
    if tracer is None:
        return None
    return tracer.start_span(
        name, context=_parent_context(parent), kind=kind, attributes=attributes
    )


def end_span(span: Span | None, error: BaseException | str | None = None) -> None:
    """End ``span`` (from :func:`start_span`), marked failed when ``error`` is given."""
    if span is None:
        return
    if error is not None:
        if isinstance(error, BaseException):
            span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end()


def mark_error(span: Span | None, description: str) -> None:
    """Set ``span``'s status to error (a call that ended with a failure status)."""
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, description))


def _parent_context(parent: str | bytes | None) -> Context:
    # An empty Context (not None): None would mean "the current one".
    return context_from(parent) or Context()
