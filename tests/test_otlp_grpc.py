"""OTLP over gRPC, spans and metrics, into a real gRPC receiver on loopback."""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import llmtrace


class Receiver(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.metric_names: set[str] = set()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self.spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            return trace_service_pb2.ExportTraceServiceResponse()
        self.metric_names |= {m.name for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[str, Receiver]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(handler, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(handler, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", handler
    server.stop(grace=None)


def test_spans_and_metrics_over_grpc(receiver: tuple[str, Receiver], tmp_path: Path) -> None:
    endpoint, handler = receiver
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from opentelemetry import metrics, trace
from conftest import openai_client, http_module
from fake_api import FakeAPI
llmtrace.instrument()
with llmtrace.tags(tenant="acme"):
    openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
assert trace.get_tracer_provider().force_flush(10_000)
assert metrics.get_meter_provider().force_flush(10_000)
"""
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "LLMTRACE_STORE": "off"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    (span,) = handler.spans
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert span.name == "chat gpt-4o-mini" and attrs["llmtrace.tenant"].string_value == "acme"
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "llmtrace.cost"} <= handler.metric_names


def test_a_bad_protocol_fails_instrument_and_applies_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtrace import call

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(llmtrace.ConfigError, match="carrier-pigeon"):
        llmtrace.instrument(otlp_endpoint="http://127.0.0.1:1")
    assert call.runtime is None
