"""The examples run as users run them, against FakeAPI served over HTTP on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from fake_server import started

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def base_url() -> Iterator[str]:
    yield from started()


@pytest.mark.parametrize("example, env_base", [("openai_app.py", "OPENAI_BASE_URL"), ("anthropic_app.py", "ANTHROPIC_BASE_URL")])
def test_example_runs_and_fills_the_store(example: str, env_base: str, base_url: str, tmp_path: Path) -> None:
    suffix = "/v1" if example == "openai_app.py" else ""
    env = {"PATH": "/usr/bin:/bin", env_base: base_url + suffix, "OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-test",
           "LLMTRACE_DB": str(tmp_path / "example.duckdb")}
    out = subprocess.run([sys.executable, str(EXAMPLES / example)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "hello there" in out.stdout and "w1" in out.stdout
    # The store's last flush runs at exit (DuckDB loads then): only llmtrace's own log lines may reach stderr.
    assert [line for line in out.stderr.splitlines() if not line.startswith("llmtrace: ")] == []
    report = subprocess.run([sys.executable, "-m", "llmtrace.cli", "report", "--format", "json"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=60)
    assert report.returncode == 0, report.stderr
    import json

    (row,) = json.loads(report.stdout)
    assert row["calls"] == 2 and row["input_tokens"] > 0
    if example == "anthropic_app.py":
        assert row["cost_usd"] > 0
    else:  # an OpenAI-compatible server on another host is another provider: no price is guessed for it
        assert row["cost_usd"] is None and row["unpriced_calls"] == 2


def test_fastapi_example_nests_llm_spans_under_requests(base_url: str, tmp_path: Path) -> None:
    script = f"""
import sys
sys.path.insert(0, {str(EXAMPLES.parent)!r})
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from examples.fastapi_multitenant import app
exporter = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
with TestClient(app) as http:
    for tenant in ("acme", "globex"):
        reply = http.get("/summarize", params={{"text": "a long text"}}, headers={{"X-Tenant": tenant}})
        assert reply.status_code == 200 and reply.json()["summary"] == "hello there", reply.text
spans = exporter.get_finished_spans()
llm = [s for s in spans if s.name == "chat gpt-4o-mini"]
requests = {{s.context.span_id: s for s in spans if s.name.startswith("GET /summarize") and s.parent is None}}
assert len(llm) == 2 and len(requests) == 2, [s.name for s in spans]
for span in llm:
    root = span
    while root.parent is not None:
        root = next(s for s in spans if s.context.span_id == root.parent.span_id)
    assert root.context.span_id in requests
print(sorted(s.attributes["llmtrace.tenant"] for s in llm))
"""
    env = {"PATH": "/usr/bin:/bin", "OPENAI_BASE_URL": base_url + "/v1", "OPENAI_API_KEY": "sk-test", "LLMTRACE_STORE": "off"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['acme', 'globex']"


def test_recorded_traffic_example_replays_every_pair() -> None:
    from conftest import recorded_rows

    out = subprocess.run([sys.executable, str(EXAMPLES / "recorded_traffic.py")], capture_output=True, text=True, timeout=300, check=True).stdout
    rows = len(recorded_rows())
    assert f"{rows} recorded calls replayed through the real SDKs, {rows} spans" in out
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert total[1:3] == [str(rows), "2"]  # calls, and the two recorded HTTP 400s as errors
