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
