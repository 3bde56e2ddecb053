"""The store and stream-proxy benchmarks still run against today's code (tiny sizes; no timing is asserted:
benchmarks measure speed, tests do not). overhead.py needs the peers' venvs and is not run here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from llmtrace import query

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _neighbour(tmp_path: Path) -> Path:
    """A file beside the benchmark's store: a benchmark starts its store afresh, never the folder it is in (/tmp)."""
    other = tmp_path / "not-the-benchmarks.txt"
    other.write_text("kept")
    return other


def test_store_queries_benchmark_runs_every_dashboard_question(tmp_path: Path) -> None:
    db, neighbour = str(tmp_path / "q.duckdb"), _neighbour(tmp_path)
    _run("store_queries.py", "--spans", "1000", "--db", db)
    out = _run("store_queries.py", "--spans", "3000", "--db", db)
    assert neighbour.read_text() == "kept"
    assert "generated 3,000 spans" in out
    timed = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| query")]
    assert len(timed) == 20
    assert query.span_count(db=db) == {"spans": 3000, "distinct_span_ids": 3000, "pending_segments": 0}


def test_store_ingest_benchmark_stores_every_span_it_feeds(tmp_path: Path) -> None:
    db, neighbour = str(tmp_path / "ingest.duckdb"), _neighbour(tmp_path)
    for _ in range(2):  # the second run starts from an empty store
        out = _run("store_ingest.py", "--spans", "2000", "--distinct", "200", "--db", db)
        assert "spans: 2,000 fed, 2,000 in DuckDB" in out
    assert neighbour.read_text() == "kept"
    assert query.span_count(db=db)["spans"] == 2000


def test_store_ingest_benchmark_at_a_steady_rate_reports_the_backlog_it_leaves(tmp_path: Path) -> None:
    db = str(tmp_path / "ingest" / "ingest.duckdb")
    out = _run("store_ingest.py", "--spans", "20000", "--rate", "20000", "--distinct", "200", "--db", db, "--stalls")
    assert "spans: 20,000 fed, 20,000 in DuckDB" in out
    for half in ("first", "second"):
        assert f"backlog in the {half} half of the feed: at most " in out
    assert re.search(r"app thread stalls \(a 1 ms sleep woken late, [\d,]+ times\): p50 [\d.]+ ms", out)


def test_stream_proxy_benchmark_ends_one_span_per_stream() -> None:
    out = _run("stream_proxy.py", "--quads", "2", "--repeat", "1")
    assert "per chunk:" in out
    assert "spans: 10 for 10 proxied streams" in out
