"""Celery's prefork pool: a child process ends with os._exit() (at shutdown, and each time the pool recycles it),
so neither atexit nor multiprocessing's finalizers run there. A real worker, on kombu's filesystem broker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from llmtrace import query

celery = pytest.importorskip("celery")

HERE = Path(__file__).parent

TASKS = """
import sys
sys.path.insert(0, {tests!r})
import llmtrace, openai
from celery import Celery
from conftest import http_module, openai_client
from fake_api import FakeAPI

app = Celery("tasks", broker="filesystem://")
app.conf.broker_transport_options = {{"data_folder_in": {queue!r}, "data_folder_out": {queue!r}, "polling_interval": 0.1}}
llmtrace.instrument(db={db!r}, flush_interval=600)  # no timed flush: only a child's exit writes its spans


@app.task
def ask(tenant):
    with llmtrace.tags(tenant=tenant):
        openai_client(FakeAPI(http_module(openai))).chat.completions.create(
            model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
"""


def test_a_celery_pool_child_stores_its_calls_before_it_exits(tmp_path: Path) -> None:
    db, queue = str(tmp_path / "store" / "llmtrace.duckdb"), tmp_path / "queue"
    queue.mkdir()
    (tmp_path / "tasks.py").write_text(TASKS.format(tests=str(HERE), queue=str(queue), db=db))
    # Each child runs one task, then the pool replaces it: every call ends in a child that exits.
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=prefork", "--concurrency=1",
         "--max-tasks-per-child=1", "--loglevel=warning", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    sender = celery.Celery(broker="filesystem://")
    sender.conf.broker_transport_options = {"data_folder_in": str(queue), "data_folder_out": str(queue)}
    tenants = [f"t-{i}" for i in range(3)]
    stored: list[str] = []
    try:
        for tenant in tenants:
            sender.send_task("tasks.ask", args=[tenant])
        deadline = time.monotonic() + 60
        while sorted(stored) != tenants and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
            if Path(db).parent.exists():
                rows = query.spend_by("tenant", query.TimeRange.last(timedelta(hours=1)), db=db)
                stored = [row["key"] for row in rows]
    finally:
        worker.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        output, _ = worker.communicate(timeout=60)
    assert sorted(stored) == tenants, output
