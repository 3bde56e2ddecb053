"""OTLP exporters for spans and metrics, over HTTP/protobuf (default) or gRPC.

Configured by the standard variables (``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT``, ``_PROTOCOL``,
``_HEADERS``, ``_TIMEOUT``, ...), which the OTel exporters read themselves, or by ``instrument()``
options: ``otlp_endpoint`` (a base URL, like ``OTEL_EXPORTER_OTLP_ENDPOINT``) and ``otlp_protocol``.
"""

from __future__ import annotations

import os
from typing import Any

from .config import ConfigError, Settings

PROTOCOLS = ("http/protobuf", "grpc")


def protocol_for(signal: str, settings: Settings) -> str:
    """``signal`` is ``TRACES`` or ``METRICS``; an explicit setting wins over the variables."""
    env = os.environ
    protocol = (
        settings.otlp_protocol
        or env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol not in PROTOCOLS:
        raise ConfigError(f"OTLP protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol


def span_exporter(settings: Settings, endpoint_option: str | None) -> Any:
    if protocol_for("TRACES", settings) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter(endpoint=endpoint_option) if endpoint_option else GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if endpoint_option:
        return OTLPSpanExporter(endpoint=endpoint_option.rstrip("/") + "/v1/traces")
    return OTLPSpanExporter()


def metric_exporter(settings: Settings, endpoint_option: str | None) -> Any:
    if protocol_for("METRICS", settings) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        return GrpcMetricExporter(endpoint=endpoint_option) if endpoint_option else GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    if endpoint_option:
        return OTLPMetricExporter(endpoint=endpoint_option.rstrip("/") + "/v1/metrics")
    return OTLPMetricExporter()
