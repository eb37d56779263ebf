"""OpenTelemetry tracing: one trace per job, from the API request through the worker to every webhook.

The exporter is chosen by OTEL_EXPORTER (none|console|otlp; the standard OTEL_* variables configure OTLP).
Context crosses into RQ through the job's `meta` (W3C traceparent), see `inject_context`/`extract_context`.
"""

from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

TRACE_META_KEY = "otel"
"""Key in an RQ job's meta that carries the W3C trace context of the request that enqueued it."""

_configured = False


def configure_tracing(exporter_name: str, service_name: str = "jobsite") -> TracerProvider:
    """Install the global tracer provider once per process (web or worker)."""
    global _configured
    provider = trace.get_tracer_provider()
    if _configured and isinstance(provider, TracerProvider):
        return provider
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter: SpanExporter | None = None
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    if exporter is not None:
        instrument_django()
    return provider


def instrument_django() -> None:
    """A span for every request, the parent of its job's spans; once per process.

    Only with an exporter: with none, no span is ever read, and the request span alone cost 0.3-0.5 ms of
    CPU per request (bench/README.md). The job's own spans (enqueue, run, deliveries) are made either way.
    """
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    instrumentor = DjangoInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        return
    instrumentor.instrument(is_sql_commentor_enabled=False)
    _keep_host_check_first()


def _keep_host_check_first() -> None:
    """The instrumentor puts its middleware first, and it reads the Host header: refuse a bad one before it."""
    from django.conf import settings

    from jobsite.edge import HOST_CHECK_MIDDLEWARE

    settings.MIDDLEWARE = [HOST_CHECK_MIDDLEWARE, *(m for m in settings.MIDDLEWARE if m != HOST_CHECK_MIDDLEWARE)]


def get_tracer() -> trace.Tracer:
    return trace.get_tracer("jobsite")


def inject_context() -> dict[str, str]:
    """The current trace context as a carrier dict, to store in an RQ job's meta."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: dict[str, Any] | None) -> context.Context:
    return propagate.extract(carrier or {})
