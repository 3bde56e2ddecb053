"""fork() while llmtrace's background work is in progress: the fork waits for it, so a child never
inherits what a thread that does not exist there was holding (an import lock, an open DuckDB)."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import duckdb
import pytest

from llmtrace import query
from llmtrace import _fork
from llmtrace._fork import background_work
from store_helpers import emit, provider_with_store


def _fork_and_wait(child: Callable[[], int], timeout: float = 30) -> int:
    """Run ``child`` in a forked process; its exit code, or -1 if it hung (then it is killed)."""
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = child()
        finally:
            os.write(done_w, b"1")
            os._exit(code)
    ready, _, _ = select.select([done_r], [], [], timeout)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return -1
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_child_forked_during_a_background_import_can_import_that_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "slow_to_import.py").write_text("import time\nSTARTED.set()\ntime.sleep(0.5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    started = threading.Event()
    import builtins

    monkeypatch.setattr(builtins, "STARTED", started, raising=False)

    def background_import() -> None:
        with background_work():  # as the price warm-up and the store writer's first round do
            import slow_to_import  # noqa: F401

    thread = threading.Thread(target=background_import)
    thread.start()
    assert started.wait(10)

    def child() -> int:
        import slow_to_import  # noqa: F401  (hangs for ever if the parent's thread held its import lock)

        return 0

    try:
        assert _fork_and_wait(child) == 0
    finally:
        thread.join()
        sys.modules.pop("slow_to_import", None)


def test_fork_waits_for_a_read_of_the_store_to_close_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child must not inherit an open DuckDB database from a thread it does not have (DuckDB does not
    survive fork: such a child reports leaked objects at exit, or aborts)."""
    db = str(tmp_path / "store.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 3)
    assert writer.force_flush()
    events: list[str] = []  # what the reading thread did to its connection, as the child inherits it
    connect = duckdb.connect

    class Recorded:
        def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
            self.con = con
            events.append("opened")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.con, name)

        def close(self) -> None:
            self.con.close()
            events.append("closed")

    monkeypatch.setattr(query.duckdb, "connect", lambda *args, **kwargs: Recorded(connect(*args, **kwargs)))
    opened = threading.Event()

    def dashboard_question() -> None:
        with query.open_store(db) as con:
            opened.set()
            time.sleep(0.5)
            con.execute("SELECT count(*) FROM spans").fetchall()

    thread = threading.Thread(target=dashboard_question)
    thread.start()
    assert opened.wait(10)

    def child() -> int:
        if events != ["opened", "closed"]:
            return 1  # forked while the database was open
        emit(provider, 2)  # and the child's own store work goes on
        return 0 if writer.force_flush() and query.span_count(db=db)["spans"] == 5 else 2

    try:
        assert _fork_and_wait(child) == 0
    finally:
        thread.join()


def test_fork_waits_for_the_background_work_under_way_not_for_work_started_after_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A busy process's writer starts a round as soon as one ends: work starting while fork() waits (its wait lets go
    of the lock) kept it waiting its whole FORK_WAIT_S, then forking anyway, into a child whose writer could be stuck
    in a lock the parent's thread held."""
    monkeypatch.setattr(_fork, "FORK_WAIT_S", 5.0)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            with background_work():
                time.sleep(0.02)

    workers = [threading.Thread(target=busy) for _ in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(0.1)
    try:
        assert _fork_and_wait(lambda: 0) == 0
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert "fork() waited" not in caplog.text


def test_fork_lets_work_that_a_piece_under_way_waits_for_go_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The monitor's round waits for the flush it asked of the store's writer; a writer round that starts while a
    fork() waits is held back only briefly (HELD_FOR_FORK_S), or the round, and the fork, would wait out FORK_WAIT_S."""
    monkeypatch.setattr(_fork, "FORK_WAIT_S", 5.0)
    outer_started, inner_done = threading.Event(), threading.Event()

    def outer() -> None:  # the monitor's round
        with background_work():
            outer_started.set()
            inner_done.wait(10)

    def inner() -> None:  # the flush it waits for, starting once the fork waits
        time.sleep(0.3)
        with background_work():
            inner_done.set()

    threads = [threading.Thread(target=outer), threading.Thread(target=inner)]
    threads[0].start()
    assert outer_started.wait(10)
    threads[1].start()
    try:
        assert _fork_and_wait(lambda: 0) == 0
    finally:
        for thread in threads:
            thread.join()
    assert inner_done.is_set() and "fork() waited" not in caplog.text


def test_a_child_forked_while_the_stream_ender_was_being_started_reads_streams(captured: Any) -> None:
    import openai

    from conftest import http_module, openai_client
    from fake_api import FakeAPI
    from llmtrace import stream

    client = openai_client(FakeAPI(http_module(openai)))
    hi = [{"role": "user", "content": "hi"}]

    def child() -> int:  # a new process starts its own ender thread at its first stream
        return 0 if list(client.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True)) else 1

    with stream._ender_lock:  # as a thread of the parent starting the ender thread at the instant of the fork
        code = _fork_and_wait(child)
    assert code == 0  # not -1: the child waited for ever on a lock no thread of its own held


def test_a_child_forked_while_a_tokenizer_was_being_built_builds_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import Future

    from llmtrace import tokenizer

    # As an app thread of the parent building the encoding at the instant of the fork: no thread finishes it there.
    monkeypatch.setattr(tokenizer, "_encodings", {"o200k_base": Future()})

    def child() -> int:
        return 0 if tokenizer.count_text("gpt-4o", "hello world") == 2 else 1

    assert _fork_and_wait(child) == 0  # not -1: the child waited for ever on a build no thread of its own was doing


def test_a_child_leaves_the_streams_its_parent_holds_to_the_parent(captured: Any) -> None:
    import openai

    from conftest import http_module, openai_client
    from fake_api import FakeAPI
    from llmtrace import stream

    held = openai_client(FakeAPI(http_module(openai))).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    next(iter(held))

    def child() -> int:  # its exit ends the streams still open: none of them is its own
        stream.end_open_streams()
        return len(captured.spans())

    assert _fork_and_wait(child) == 0  # the parent's call, ended in the child too, would be two spans of one call
    stream.end_open_streams()
    assert len(captured.spans()) == 1
