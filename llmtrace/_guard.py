"""Containment for llmtrace's own failures: they are logged and counted, never raised into the host app.

Code that runs inside a user's SDK call wraps its own work in ``with internal_errors():`` (or, on the path
every call takes, in the ``try: ... except Exception as exc: report(exc)`` it stands for, which costs no calls).
The user's call itself always runs outside that block, so its result and exceptions pass through untouched.
Tests install a hook with :func:`set_error_hook` to turn every contained error back into a failure.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Callable

logger = logging.getLogger("llmtrace")

ErrorHook = Callable[[BaseException], None]

_hook: ErrorHook | None = None
_count = 0
_count_lock = threading.Lock()


def set_error_hook(hook: ErrorHook | None) -> None:
    """Call ``hook(exc)`` for every contained internal error (tests use it to fail loudly)."""
    global _hook
    _hook = hook


def internal_error_count() -> int:
    """How many internal errors this process has contained so far."""
    return _count


def report(exc: BaseException) -> None:
    """Log and count an internal error that was caught elsewhere."""
    global _count
    with _count_lock:
        _count += 1
    logger.warning("llmtrace internal error (the application is not affected): %r", exc, exc_info=exc)
    hook = _hook
    if hook is not None:
        hook(exc)


class _InternalErrors:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None:
            return False
        # KeyboardInterrupt and friends are the user's, not ours: let them through.
        if not isinstance(exc, Exception):
            return False
        report(exc)
        return True


_INSTANCE = _InternalErrors()


def internal_errors() -> _InternalErrors:
    """Context manager that contains (logs, counts, swallows) any ``Exception`` raised inside it."""
    return _INSTANCE


class Fault:
    """A condition outside llmtrace (a disk, a database) that stops part of it: logged once when it starts or
    changes, once when it clears, never once per retry. ``problem`` is a %-format for the details."""

    def __init__(self, problem: str, recovered: str) -> None:
        self.problem = problem
        self.recovered = recovered
        self.current: str | None = None  # the details being reported; None while all is well

    def report(self, details: str) -> None:
        if details != self.current:
            logger.error(self.problem, details)
            self.current = details

    def clear(self) -> None:
        if self.current is not None:
            logger.warning(self.recovered)
            self.current = None
