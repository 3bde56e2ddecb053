"""Spans from the real SDKs reach a real OpenTelemetry backend, Arize Phoenix, over OTLP/HTTP and gRPC,
and read back intact through its REST API.

Phoenix runs from its own venv (``make test`` builds ``.venv-phoenix`` and sets LLMTRACE_PHOENIX_PYTHON):
it pins SDK versions of its own, which must not replace the ones llmtrace is tested against.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

PHOENIX_PYTHON = os.environ.get("LLMTRACE_PHOENIX_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not Path(PHOENIX_PYTHON).is_file(), reason="Phoenix not installed (make test builds .venv-phoenix)"
)
HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:  # loopback only
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    workdir = tmp_path_factory.mktemp("phoenix")
    http_port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(workdir), "PHOENIX_HOST": "127.0.0.1",
           "PHOENIX_PORT": str(http_port), "PHOENIX_GRPC_PORT": str(grpc_port), "PHOENIX_TELEMETRY_ENABLED": "false"}
    log = (workdir / "phoenix.log").open("w")
    server = subprocess.Popen([PHOENIX_PYTHON, "-m", "phoenix.server.main", "serve"], cwd=workdir, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(f"http://127.0.0.1:{http_port}/v1/projects")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Phoenix did not start: " + (workdir / "phoenix.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield http_port, grpc_port
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_arrive_in_phoenix(phoenix: tuple[int, int], protocol: str, tmp_path: Path) -> None:
    http_port, grpc_port = phoenix
    tenant = f"tenant-{protocol.split('/')[0]}"
    script = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import llmtrace, openai, anthropic
from opentelemetry import trace
from conftest import openai_client, anthropic_client, http_module
from fake_api import FakeAPI
llmtrace.instrument()
app = trace.get_tracer("the-app")
with app.start_as_current_span("POST /ask"):
    with llmtrace.tags(tenant={tenant!r}, feature="ask", user="u-1"):
        openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
        anthropic_client(FakeAPI(http_module(anthropic))).messages.create(model="claude-3-5-haiku-20241022", max_tokens=10, messages=[{{"role": "user", "content": "x"}}])
assert trace.get_tracer_provider().force_flush(20_000)
"""
    endpoint = f"http://127.0.0.1:{grpc_port if protocol == 'grpc' else http_port}"
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint + ("" if protocol == "grpc" else "/v1/traces"),
           "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_INSECURE": "true",
           "OTEL_SERVICE_NAME": "phoenix-test", "LLMTRACE_STORE": "off"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr

    deadline = time.monotonic() + 30
    while True:
        spans = _get(f"http://127.0.0.1:{http_port}/v1/projects/default/spans?limit=1000")["data"]
        mine = [s for s in spans if s["attributes"].get("llmtrace.tenant") == tenant]
        if len(mine) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(s["name"] for s in mine) == ["chat claude-3-5-haiku-20241022", "chat gpt-4o-mini"]
    parents = {s["parent_id"] for s in mine}
    (request,) = [s for s in spans if s["name"] == "POST /ask" and s["context"]["span_id"] in parents]
    assert all(s["context"]["trace_id"] == request["context"]["trace_id"] for s in mine)
    by_name = {s["name"]: s["attributes"] for s in mine}
    gpt, claude = by_name["chat gpt-4o-mini"], by_name["chat claude-3-5-haiku-20241022"]
    assert gpt["gen_ai.usage.input_tokens"] == 120 and gpt["gen_ai.usage.cache_read.input_tokens"] == 64
    assert claude["gen_ai.usage.input_tokens"] == 1230 and claude["gen_ai.provider.name"] == "anthropic"
    assert gpt["llmtrace.cost.usd"] > 0 and claude["llmtrace.cost.usd"] > 0
    assert gpt["llmtrace.feature"] == "ask" and gpt["user.id"] == "u-1"
