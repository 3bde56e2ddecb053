"""fork() and llmtrace's background work.

Prefork servers (gunicorn --preload, Celery's prefork pool) and ``multiprocessing`` fork the process in
which ``instrument()`` ran. A child has none of its parent's threads, so anything one of them held at
that instant stays held in the child: an import in progress (the child's first LLM call then hangs on
that module's import lock), an open DuckDB database (DuckDB does not survive fork: the child aborts or
leaks at exit), the spend guard's lock. So llmtrace's background work (a store write and merge, a
monitor round, the price warm-up, any read of the store) runs inside ``background_work()``, and fork()
waits until none is in progress (at most ``FORK_WAIT_S``); new work waits for the fork meanwhile (at most
``HELD_FOR_FORK_S``: a piece under way may be waiting for it, as the monitor's round waits for a flush of the store's
writer). The child then starts the threads it needs of its own (store writer, monitor).
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger("llmtrace")

FORK_WAIT_S = 10.0  # a merge of a large backlog takes seconds; past this, fork() goes ahead anyway
# New work waits this long at most for a fork() under way: long enough for the work in progress to end (a writer round
# takes milliseconds), short enough that work it waits for (a flush, a merge) holds the fork back no longer than this.
HELD_FOR_FORK_S = 1.0

_thread = threading.local()  # .depth: how deep this thread is in background work


class _Gate:
    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.active = 0  # pieces of background work in progress
        # A fork() waits for the work in progress: new work waits too (its wait lets go of the lock), or a busy
        # process, whose writer starts a round as soon as one ends, would keep it waiting until FORK_WAIT_S.
        self.forking = False


_gate = _Gate()


@contextmanager
def background_work() -> Iterator[None]:
    gate = _gate
    depth = getattr(_thread, "depth", 0)
    with gate.condition:  # blocks only while a fork() is taking place
        if depth == 0:  # work within work goes on: the fork waits for the outer piece
            gate.condition.wait_for(lambda: not gate.forking, HELD_FOR_FORK_S)
        gate.active += 1
    _thread.depth = depth + 1
    try:
        yield
    finally:
        _thread.depth -= 1
        with gate.condition:
            gate.active -= 1
            gate.condition.notify_all()


def _before_fork() -> None:
    # Held from here until fork() returns: no background work starts in between. Work of the forking
    # thread's own (it forked from inside some) cannot finish first: it is not waited for.
    own = getattr(_thread, "depth", 0)
    _gate.condition.acquire()
    _gate.forking = True
    if not _gate.condition.wait_for(lambda: _gate.active <= own, FORK_WAIT_S):
        logger.warning("llmtrace: fork() waited %.0f s for llmtrace's background work; forking anyway", FORK_WAIT_S)


def _after_fork_in_parent() -> None:
    _gate.forking = False
    _gate.condition.notify_all()
    _gate.condition.release()


def _after_fork_in_child() -> None:
    # None of the parent's background work goes on here: a new gate. The old one is released for the
    # forking thread, in case it forked from inside background work (its exit then counts on the old one).
    global _gate
    parent, _gate = _gate, _Gate()
    parent.condition.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
