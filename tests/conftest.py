from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

import llmtrace.testing
from llmtrace import _guard, pricing

DATA = Path(__file__).parent / "data" / "provider_responses.jsonl"
DEMO_CALLS = 120


@pytest.fixture(autouse=True)
def internal_errors_fail_tests() -> Iterator[list[BaseException]]:
    """Every error llmtrace contains in production fails the test that caused it."""
    errors: list[BaseException] = []
    _guard.set_error_hook(errors.append)
    yield errors
    _guard.set_error_hook(None)
    if errors:
        raise AssertionError(f"llmtrace contained {len(errors)} internal error(s): {errors!r}") from errors[0]


@pytest.fixture(autouse=True)
def spans_hold_what_the_sdk_would_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """llmtrace hands the values it builds to spans unchecked (``call.add_attributes``): every span a test exports
    must hold what the SDK's own cleaning keeps (no None, list, bytes or object among its values)."""
    wrong: list[str] = []
    export = InMemorySpanExporter.export

    def checked_export(self: InMemorySpanExporter, spans: Any) -> Any:
        for span in spans:
            given = dict(span.attributes or {})
            cleaned = dict(BoundedAttributes(attributes=given))
            if cleaned != given or any(type(cleaned[key]) is not type(value) for key, value in given.items()):
                wrong.append(f"{span.name}: {given!r}")
        return export(self, spans)

    monkeypatch.setattr(InMemorySpanExporter, "export", checked_export)
    yield
    assert not wrong, f"spans holding values the SDK would have cleaned: {wrong}"


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "LLMTRACE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray llmtrace.toml
    pricing.reset_overrides()


@pytest.fixture(autouse=True)
def _stop_store_writers() -> Iterator[None]:
    """Writers a test made stop with it, instead of flushing at interpreter exit."""
    yield
    from llmtrace.store import writer

    for store_writer in list(writer._writers):
        store_writer.shutdown()


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """An OTLP endpoint that takes connections and never answers (a hung collector, a black-holing proxy)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
    server.close()
    for connection in held:
        connection.close()


def run_demo(db: str, calls: int, seed: int) -> str:
    """Fill a store with ``llmtrace demo`` run as a real process (the real SDKs against the simulator)."""
    done = subprocess.run(
        [sys.executable, "-m", "llmtrace.cli", "demo", "--calls", str(calls), "--no-dashboard", "--db", db,
         "--seed", str(seed), "--concurrency", "40"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": ""},
    )
    assert done.returncode == 0, done.stderr
    assert f"{calls} calls" in done.stdout and "tenant" in done.stdout
    return db


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return run_demo(str(tmp_path_factory.mktemp("demo") / "demo.duckdb"), DEMO_CALLS, seed=11)


@pytest.fixture
def captured() -> Iterator[llmtrace.testing.Captured]:
    with llmtrace.testing.capture() as c:
        yield c


def recorded_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def http_module(sdk: Any) -> Any:
    """The HTTP library this SDK version is built on: httpx2 for the newest, httpx before."""
    import importlib

    base = importlib.import_module(sdk.__name__ + "._base_client")
    if hasattr(base, "httpx2"):
        import httpx2

        return httpx2
    import httpx

    return httpx


Handler = Callable[[Any], Any]


def openai_client(handler: Handler, *, is_async: bool = False, base_url: str = "https://api.openai.com/v1", **kw: Any) -> Any:
    import openai

    http = http_module(openai)
    transport = http.MockTransport(handler)
    if is_async:
        return openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, http_client=http.AsyncClient(transport=transport), **kw)
    return openai.OpenAI(api_key="sk-test", base_url=base_url, http_client=http.Client(transport=transport), **kw)


def anthropic_client(handler: Handler, *, is_async: bool = False, **kw: Any) -> Any:
    import anthropic

    http = http_module(anthropic)
    transport = http.MockTransport(handler)
    base = "https://api.anthropic.com"
    if is_async:
        return anthropic.AsyncAnthropic(api_key="sk-test", base_url=base, http_client=http.AsyncClient(transport=transport), **kw)
    return anthropic.Anthropic(api_key="sk-test", base_url=base, http_client=http.Client(transport=transport), **kw)


class CountingIds(IdGenerator):
    """The same ids in the same order every run, so two spans can be compared id for id; small, so their hex text
    starts with zeros."""

    def __init__(self) -> None:
        self.next = 0x1234

    def generate_span_id(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        self.next += 1
        return self.next << 64
