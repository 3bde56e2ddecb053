"""Spans leave over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set: a real receiver on loopback."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmtrace.metrics import DURATION_BUCKETS


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Any]]]:
    with _receiver() as started:
        yield started


@contextlib.contextmanager
def _receiver() -> Iterator[tuple[str, list[Any]]]:
    received: list[Any] = []  # decoded requests, then the headers of each as a dict

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({k.lower(): v for k, v in self.headers.items()})
            if self.path == "/v1/traces":
                received.append(ExportTraceServiceRequest.FromString(body))
            elif self.path == "/v1/metrics":
                received.append(ExportMetricsServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


@pytest.mark.parametrize("how", ["environment", "option", "a signal's URL as option", "llmtrace variable", "config file"])
def test_spans_reach_an_otlp_receiver(receiver: tuple[str, list[Any]], tmp_path: Path, how: str) -> None:
    endpoint, received = receiver
    setup = "llmtrace.instrument()"
    if how == "option":
        setup = f"llmtrace.instrument(otlp_endpoint={endpoint!r})"
    elif how == "a signal's URL as option":  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT's kind of value: the base is meant
        setup = f"llmtrace.instrument(otlp_endpoint={endpoint + '/v1/traces'!r})"
    elif how == "config file":
        (tmp_path / "llmtrace.toml").write_text(f'[llmtrace]\notlp_endpoint = "{endpoint}"\n')
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from opentelemetry import metrics, trace
from conftest import openai_client, http_module
from fake_api import FakeAPI
{setup}
with llmtrace.tags(tenant="acme", feature="search"):
    openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
assert trace.get_tracer_provider().force_flush(10_000)
assert metrics.get_meter_provider().force_flush(10_000)
"""
    env = {"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": "checkout-api"}
    if how == "environment":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env["OTEL_EXPORTER_OTLP_HEADERS"] = "x-api-key=s3cret"
        env["OTEL_RESOURCE_ATTRIBUTES"] = "deployment.environment=staging"
    elif how == "llmtrace variable":
        env["LLMTRACE_OTLP_ENDPOINT"] = endpoint
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    traces = [r for r in received if isinstance(r, ExportTraceServiceRequest)]
    spans = [(rs, span) for req in traces for rs in req.resource_spans for ss in rs.scope_spans for span in ss.spans]
    metric_names = {m.name for r in received if isinstance(r, ExportMetricsServiceRequest)
                    for rm in r.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"gen_ai.client.token.usage", "llmtrace.cost"} <= metric_names
    if how == "environment":  # the standard variables reach the exporter: headers, for one
        assert all(h.get("x-api-key") == "s3cret" for h in received if isinstance(h, dict))
    assert len(spans) == 1
    resource, span = spans[0]
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert span.name == "chat gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"].int_value == 120
    assert attrs["llmtrace.cost.usd"].double_value > 0
    assert attrs["llmtrace.tenant"].string_value == "acme"
    resource_attributes = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
    assert resource_attributes["service.name"] == "checkout-api"
    if how == "environment":
        assert resource_attributes["deployment.environment"] == "staging"


def test_llmtraces_endpoint_on_the_apps_own_provider_gets_only_llm_spans(receiver: tuple[str, list[Any]], tmp_path: Path) -> None:
    """The app's provider exports the app's spans where the app says; llmtrace's otlp_endpoint is for its LLM spans:
    not a second copy of every span of the app's (which may go to another backend, or carry what it must not)."""
    endpoint, received = receiver
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from conftest import openai_client, http_module
from fake_api import FakeAPI
trace.set_tracer_provider(TracerProvider())
llmtrace.instrument(otlp_endpoint={endpoint!r}, store=False)
with trace.get_tracer("app").start_as_current_span("POST /checkout"):
    openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
assert trace.get_tracer_provider().force_flush(10_000)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin"}, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    names = [span.name for r in received if isinstance(r, ExportTraceServiceRequest)
             for rs in r.resource_spans for ss in rs.scope_spans for span in ss.spans]  # fmt: skip
    assert names == ["chat gpt-4o-mini"]


def test_an_otlp_endpoint_without_a_scheme_is_a_config_error() -> None:
    import llmtrace

    with pytest.raises(llmtrace.ConfigError, match="otlp_endpoint: 'collector:4318' is not an http:// or https:// URL"):
        llmtrace.instrument(otlp_endpoint="collector:4318")


def test_an_otlp_protocol_llmtrace_cannot_speak_is_a_config_error_naming_where_it_was_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llmtrace
    from llmtrace import config

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(llmtrace.ConfigError, match="^OTEL_EXPORTER_OTLP_PROTOCOL: the OTLP protocol must be one of"):
        llmtrace.instrument(store=False)
    with pytest.raises(llmtrace.ConfigError, match="^instrument\\(\\): otlp_protocol: .* got 'gRPC'"):
        llmtrace.instrument(store=False, otlp_protocol="gRPC")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")  # no OTLP export at all: a typo is refused all the same
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL")
    with pytest.raises(llmtrace.ConfigError, match="^LLMTRACE_OTLP_PROTOCOL: otlp_protocol: .* got 'grcp'"):
        config.load({}, {"LLMTRACE_OTLP_PROTOCOL": "grcp"})


def test_the_exporter_names_opentelemetry_gives_its_otlp_exporters_fix_their_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtrace import config, export

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    for name, protocol in (("otlp_proto_grpc", "grpc"), ("otlp_proto_http", "http/protobuf"), ("otlp", "http/protobuf")):
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", name)
        assert export.protocol_for("METRICS", config.Settings()) == protocol, name
    assert export.protocol_for("METRICS", config.Settings(otlp_protocol="http/protobuf")) == "http/protobuf"  # llmtrace's own


@pytest.mark.parametrize(
    "variables", ["traces endpoint only", "traces exporter none", "traces exporter console", "traces exporter console,otlp_proto_http"]
)
def test_a_signal_goes_over_otlp_only_where_the_variables_send_it(
    receiver: tuple[str, list[Any]], tmp_path: Path, variables: str
) -> None:
    endpoint, received = receiver
    env = {"PATH": "/usr/bin:/bin"}
    if variables == "traces endpoint only":
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint + "/v1/traces"
        env["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"] = "http/json"  # for a signal not exported: no reason to refuse
    else:
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_TRACES_EXPORTER=variables.rpartition(" ")[2])
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from conftest import openai_client, http_module
from fake_api import FakeAPI
llmtrace.instrument(store=False)
openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
assert trace.get_tracer_provider().force_flush(10_000)
provider = metrics.get_meter_provider()
print("METRICS", isinstance(provider, MeterProvider) and provider.force_flush(10_000))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    traces = [r for r in received if isinstance(r, ExportTraceServiceRequest)]
    metric_requests = [r for r in received if isinstance(r, ExportMetricsServiceRequest)]
    if variables == "traces endpoint only":  # no metrics exporter posting to localhost:4318 nobody asked for
        assert len(traces) == 1 and "METRICS False" in out.stdout and not metric_requests
    elif variables.endswith("otlp_proto_http"):  # OpenTelemetry's own name of its OTLP/HTTP exporter
        assert len(traces) == 1 and "METRICS True" in out.stdout and metric_requests
    else:
        assert not traces and "METRICS True" in out.stdout and metric_requests


def test_instrument_again_exports_only_where_the_last_one_says(receiver: tuple[str, list[Any]], tmp_path: Path) -> None:
    first, first_received = receiver
    with _receiver() as (second, second_received):
        script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from opentelemetry import trace
from conftest import openai_client, http_module
from fake_api import FakeAPI
client = openai_client(FakeAPI(http_module(openai)))
def call(model):
    client.chat.completions.create(model=model, messages=[{{"role": "user", "content": "x"}}])
    assert trace.get_tracer_provider().force_flush(10_000)
llmtrace.instrument(otlp_endpoint={first!r}, store=False)
call("gpt-4o-mini")
llmtrace.instrument(otlp_endpoint={second!r}, store=False)  # changes nothing, and says so
call("gpt-4o")
for _ in range(2):
    llmtrace.uninstrument()
    llmtrace.instrument(otlp_endpoint={second!r}, store=False)
    call("gpt-4.1")
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                             env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "settings it asks for that differ from those in force: otlp_endpoint" in out.stderr

    def names(received: list[Any]) -> list[str]:
        return [span.name for r in received if isinstance(r, ExportTraceServiceRequest)
                for rs in r.resource_spans for ss in rs.scope_spans for span in ss.spans]

    assert names(first_received) == ["chat gpt-4o-mini", "chat gpt-4o"]
    assert names(second_received) == ["chat gpt-4.1", "chat gpt-4.1"]  # once each: no second exporter beside the first
    # Metrics too: llmtrace's meter provider (made once, global for good) exports where the last instrument() says.
    assert "gpt-4.1" not in _duration_points(first_received)
    second_points = _duration_points(second_received)
    assert second_points["gpt-4.1"][0] == 2
    # The GenAI conventions' buckets, also on OpenTelemetry SDKs whose OTLP exporter asks for the SDK's own defaults.
    assert second_points["gpt-4.1"][1] == DURATION_BUCKETS


def _duration_points(received: list[Any]) -> dict[str, tuple[int, list[float]]]:
    """Request model -> (count, bucket bounds) of the last gen_ai.client.operation.duration point received."""
    points = {}
    for request in received:
        if isinstance(request, ExportMetricsServiceRequest):
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name == "gen_ai.client.operation.duration":
                            for point in metric.histogram.data_points:
                                attributes = {a.key: a.value.string_value for a in point.attributes}
                                points[attributes["gen_ai.request.model"]] = (point.count, list(point.explicit_bounds))
    return points


@pytest.fixture
def failing_backend() -> Iterator[str]:
    """An OTLP endpoint that answers every export with HTTP 500."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("fault", ["nobody listening", "HTTP 500"])
def test_a_failing_exporter_logs_once_and_the_store_still_gets_everything(tmp_path: Path, fault: str, failing_backend: str) -> None:
    import socket

    if fault == "HTTP 500":
        endpoint = failing_backend
    else:
        with socket.socket() as probe:  # a loopback port with nobody listening
            probe.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    db = tmp_path / "down.duckdb"
    script = f"""
import sys, logging
sys.path.insert(0, {str(Path(__file__).parent)!r})
logging.basicConfig(level=logging.WARNING, format="LOG %(name)s %(message)s")
import llmtrace, openai
from opentelemetry import trace
from conftest import openai_client, http_module
from fake_api import FakeAPI
from llmtrace import export
llmtrace.instrument(db={str(db)!r})
client = openai_client(FakeAPI(http_module(openai)))
for batch in range(3):
    for _ in range(100):
        result = client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
        assert result.choices[0].message.content == "hello there"
    trace.get_tracer_provider().force_flush(5_000)
llmtrace.uninstrument()
from llmtrace import query
print("STORED", query.span_count(db={str(db)!r})["spans"], "SUPPRESSED", export.export_error_filter.suppressed)
"""
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    stored, suppressed = out.stdout.split()[1], int(out.stdout.split()[3])
    assert stored == "300"
    # The exporter logs the failure, or (older SDKs, whose exporter raises) the SDK's batch processor does;
    # metrics fail too. Each logger says it once, with what it means.
    lines = [line for line in out.stderr.splitlines() if line.startswith("LOG opentelemetry.")]
    loggers = [line.split()[1] for line in lines]
    assert lines and len(loggers) == len(set(loggers)), lines
    assert all("not affected" in line for line in lines)
    assert suppressed >= 2


def test_the_apps_own_exporter_failures_are_neither_muted_nor_relabelled(tmp_path: Path, failing_backend: str) -> None:
    script = f"""
import sys, logging
sys.path.insert(0, {str(Path(__file__).parent)!r})
logging.basicConfig(level=logging.WARNING, format="LOG %(name)s %(message)s")
import llmtrace, openai
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from conftest import openai_client, http_module
from fake_api import FakeAPI
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint={failing_backend + "/v1/traces"!r}, timeout=1)))
trace.set_tracer_provider(provider)  # the app's own pipeline, to a vendor that refuses it
llmtrace.instrument(store=False)
client = openai_client(FakeAPI(http_module(openai)))
for batch in range(3):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
    provider.force_flush(5_000)
"""
    # The variables point at the backend too: llmtrace exports metrics there, through a provider of its own.
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_TIMEOUT": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": failing_backend}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    failures = [line for line in out.stderr.splitlines() if line.startswith("LOG opentelemetry.")]
    assert len(failures) >= 3 and not any("llmtrace" in line for line in failures), failures  # one per failed batch


def test_instrument_again_keeps_exporting_from_the_provider_it_made(receiver: tuple[str, list[Any]], tmp_path: Path) -> None:
    endpoint, received = receiver
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from opentelemetry import trace
from conftest import openai_client, http_module
from fake_api import FakeAPI
for model in ("gpt-4o-mini", "gpt-4o"):
    llmtrace.instrument(store=False, service_name=model)  # the first makes the provider; the second finds it
    openai_client(FakeAPI(http_module(openai))).chat.completions.create(model=model, messages=[{{"role": "user", "content": "x"}}])
    assert trace.get_tracer_provider().force_flush(10_000)
    llmtrace.uninstrument()
"""
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    names = [span.name for r in received if isinstance(r, ExportTraceServiceRequest)
             for rs in r.resource_spans for ss in rs.scope_spans for span in ss.spans]
    assert names == ["chat gpt-4o-mini", "chat gpt-4o"]
    # The second instrument()'s service name cannot be applied to that provider: it says so.
    assert "service_name 'gpt-4o' not applied: the tracer provider an earlier instrument() made keeps 'gpt-4o-mini'" in out.stderr


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize("ending", ["exit", "uninstrument()"])
def test_a_collector_that_never_answers_holds_up_exit_only_for_the_shutdown_timeout(
    tmp_path: Path, silent_collector: str, protocol: str, ending: str
) -> None:
    """The exporters' own retry window (OTEL_EXPORTER_OTLP_TIMEOUT, here 120 s) would hold the process that long
    for spans and again for metrics; llmtrace waits otlp_shutdown_timeout, says so, and the store has every call."""
    db = tmp_path / "calls.duckdb"
    script = f"""
import sys, logging
sys.path.insert(0, {str(Path(__file__).parent)!r})
logging.basicConfig(level=logging.WARNING, format="LOG %(name)s %(message)s")
import llmtrace, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI
llmtrace.instrument(db={str(db)!r}, otlp_endpoint={silent_collector!r}, otlp_protocol={protocol!r}, otlp_shutdown_timeout=0.5)
client = openai_client(FakeAPI(http_module(openai)))
for _ in range(3):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
if {ending == "uninstrument()"}:
    llmtrace.uninstrument()
    print("UNINSTRUMENTED", flush=True)
"""
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_TIMEOUT": "120"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
    late = [line for line in out.stderr.splitlines() if "did not finish within 0.5 s (otlp_shutdown_timeout)" in line]
    # uninstrument() stops the span export; the metrics' last export is exit's.
    assert [("spans" in line, "metrics" in line) for line in late] == (
        [(True, True)] if ending == "exit" else [(True, False), (False, True)]
    ), out.stderr
    from llmtrace import query

    assert query.span_count(db=str(db))["spans"] == 3


def test_a_flush_returns_within_its_timeout_while_the_collector_does_not_answer(tmp_path: Path, silent_collector: str) -> None:
    """The SDK's batch processor ignores force_flush's timeout; llmtrace's export honours it, and a flush asked for
    while one still waits joins it rather than piling another thread up behind it."""
    script = f"""
import sys, threading
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from opentelemetry import trace
from conftest import openai_client, http_module
from fake_api import FakeAPI
llmtrace.instrument(store=False, otlp_endpoint={silent_collector!r}, otlp_shutdown_timeout=0.5)
openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
results = [trace.get_tracer_provider().force_flush(200) for _ in range(5)]
flushing = [t for t in threading.enumerate() if t.name == "llmtrace-otlp-spans-flush"]
print("FLUSHED", results, len(flushing))
print("LLMTRACE FLUSHED", llmtrace.flush(timeout_s=0.5))  # spans and metrics: the SDK raises for the metrics' timeout
"""
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_TIMEOUT": "120"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "FLUSHED [False, False, False, False, False] 1" in out.stdout, out.stdout + out.stderr
    assert "LLMTRACE FLUSHED False" in out.stdout and "internal error" not in out.stderr, out.stdout + out.stderr


@pytest.mark.parametrize("store_on", [True, False])
def test_the_word_on_an_export_failure_names_the_store_only_where_there_is_one(store_on: bool) -> None:
    import logging

    from llmtrace import export

    words = export.RepeatedExportErrors()
    words.store_on = store_on
    record = logging.LogRecord("opentelemetry.exporter.otlp.proto.http.trace_exporter", logging.WARNING, __file__, 1,
                               "Failed to export span batch code: %s", (503,), None)  # fmt: skip
    assert words.filter(record)
    said = record.getMessage()
    assert said.startswith("Failed to export span batch code: 503 (llmtrace: LLM calls")
    assert ("the local store" in said) is store_on


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_a_forked_childs_metrics_are_its_own_calls_under_its_own_instance_id(
    receiver: tuple[str, list[Any]], tmp_path: Path, temporality: str
) -> None:
    """A child forked by an instrumented process (multiprocessing, a Celery or gunicorn worker) inherits the meter
    provider llmtrace made, with the parent's totals in it: exported again from the child, each call (and its cost)
    counted twice, under the parent's identity, as one series two processes overwrite."""
    endpoint, received = receiver
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
           "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": temporality}  # fmt: skip
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI
llmtrace.instrument(store=False)
client = openai_client(FakeAPI(http_module(openai)))
def call():
    client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
for _ in range(3):
    call()
pid = os.fork()
if pid == 0:
    call()
    sys.exit(0)
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    calls: dict[str, list[int]] = {}  # instance id -> the call counts of its exports
    for request in (r for r in received if isinstance(r, ExportMetricsServiceRequest)):
        for rm in request.resource_metrics:
            instance = next(kv.value.string_value for kv in rm.resource.attributes if kv.key == "service.instance.id")
            calls.setdefault(instance, []).extend(
                point.count for sm in rm.scope_metrics for m in sm.metrics if m.name == "gen_ai.client.operation.duration"
                for point in m.histogram.data_points
            )  # fmt: skip
    counted = sorted((sum(counts) if temporality == "delta" else max(counts)) for counts in calls.values())
    assert counted == [1, 3]  # the child's one call and the parent's three, each process under an id of its own
