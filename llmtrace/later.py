"""Answers that come later: an OpenAI background response (``responses.create(background=True)``).

The create call answers ``queued`` before the model has worked; the usage, which is what gets billed, comes with
a later read of that response: ``responses.retrieve``, ``responses.cancel``, or a resumed stream
(``responses.stream(response_id=...)``, ``responses.retrieve(..., stream=True)``).

The create call's span ends at once, with no usage. When this process later reads that response finished, one more
span records the generation: its tokens and cost, a child of the create call's span, with that call's request
attributes and tags. It lasts as long as the generation did (``completed_at`` - ``created_at``) and ends when the
app read it finished: a span ends when llmtrace learns of it, which block budgets' accounting relies on. Each response
once: only a response this process created and has not yet seen finished counts, so polling it again, or reading
an old response, adds nothing. A response created in one process and read in another (a forked child included) is
not recorded.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator

import wrapt
from opentelemetry.trace import SpanContext

from . import attributes as A
from . import call as core
from ._guard import internal_errors, report
from .adapter import Endpoint
from .enforce import Hold

logger = logging.getLogger("llmtrace")

# Responses created and not yet read finished, oldest first. A bound for an app that never reads its answers back.
MAX_WAITING = 10_000
# A block budget's reservation for a generation this process may never read (its answer comes by webhook, or another
# process polls it) would hold the budget for ever: it is released after this long (read later, the generation
# still counts its cost).
HOLD_FOR_S = 3600.0
# The create call's request attributes that do not describe the generation again: the duplicate-call detector's
# hash (the generation is not a second request) and the prompt's content (on the create call's span already).
_NOT_REPEATED = frozenset({A.REQUEST_HASH, A.INPUT_MESSAGES, A.SYSTEM_INSTRUCTIONS, A.TOOL_DEFINITIONS})


@dataclass(frozen=True, slots=True)
class Waiting:
    """What the create call knew, kept until its answer is read."""

    endpoint: Endpoint
    attributes: dict[str, Any]
    base_url: str
    parent: SpanContext  # the create call's span
    created_ns: int  # when the create call started
    # What a block budget reserved for the call (llmtrace.enforce), and the guard holding it: the generation is the
    # call's cost, so the reservation lasts until it is read (else a loop of queued jobs would pass any budget).
    hold: Any
    guard: Any


_waiting: collections.OrderedDict[str, Waiting] = collections.OrderedDict()
# Re-entrant, as a guard: a background stream's finalizer (it calls expect) run on a thread inside one of these locked
# blocks must not wait for that thread. Streams the garbage collector frees end on a thread of their own (stream.py).
_lock = threading.RLock()
_forgotten = 0


def expect(call: core.Call, response_id: str) -> None:
    """The call's answer comes later, under this response id."""
    global _forgotten
    attributes = {k: v for k, v in call.attrs.items() if k not in _NOT_REPEATED}
    hold, call.hold = call.hold, None  # taken along: released when the generation is read, with its cost
    waiting = Waiting(call.endpoint, attributes, call.base_url, call.span.get_span_context(), call.start_ns, hold,
                      call.runtime.guard)  # fmt: skip
    with _lock:
        _waiting[response_id] = waiting
        if len(_waiting) <= MAX_WAITING:
            return
        _, oldest = _waiting.popitem(last=False)
        _forgotten += 1
        forgotten = _forgotten
    if oldest.hold is not None:
        oldest.guard.settle(oldest.hold, None)
    if forgotten == 1 or forgotten % 1000 == 0:
        logger.warning("llmtrace: over %d background responses created and never read back finished; the oldest are "
                       "forgotten (%d so far): their cost will not be recorded", MAX_WAITING, forgotten)  # fmt: skip


def release_old_holds() -> None:
    """Release the reservations of responses queued over ``HOLD_FOR_S`` ago (the budget monitor calls it each round).
    What they keep is a reservation of nothing, for the slots they count against: read later, the generation's cost
    still counts."""
    cutoff = time.time_ns() - int(HOLD_FOR_S * 1e9)
    released = []
    with _lock:
        for response_id, waiting in list(_waiting.items()):
            if waiting.created_ns > cutoff:
                break  # oldest first: the rest are younger
            if waiting.hold is not None and waiting.hold.amount:
                released.append(waiting)
                _waiting[response_id] = dataclasses.replace(waiting, hold=Hold(waiting.hold.slots, 0.0))
    for waiting in released:
        waiting.guard.settle(waiting.hold, None)


def forget() -> None:
    with _lock:
        _waiting.clear()


def _forget_in_child() -> None:
    # The parent waits for its responses: a child reading one too would record its generation a second time.
    global _lock
    _lock = threading.RLock()
    _waiting.clear()


def observe(response: Any) -> None:
    """A response read back (any response: most are not ones this process waits for). Never raises."""
    try:
        response_id = getattr(response, "id", None)
        if type(response_id) is not str:
            return
        waiting = _waiting.get(response_id)
        if waiting is None:
            return
        result = waiting.endpoint.parse(response)
        if result.pending:
            return  # not finished yet
        with _lock:
            # As it is now: its hold may have been released meanwhile (release_old_holds), and must not be twice.
            waiting = _waiting.pop(response_id, None)
        if waiting is None:
            return  # another thread read it finished first
        rt = core.runtime
        if rt is None:  # uninstrumented meanwhile (the list is emptied then, but a read may have been under way)
            return
        call = core.Call.later(waiting.endpoint, rt, waiting.attributes, waiting.base_url, waiting.parent,
                               time.time_ns() - _generation_ns(response))  # fmt: skip
        if waiting.guard is rt.guard:
            call.hold = waiting.hold  # replaced by the generation's cost as the span ends
        call.finish_later(result)
    except Exception as exc:
        report(exc)


def _generation_ns(response: Any) -> int:
    """How long the generation took: from ``created_at`` to ``completed_at``, both the server's (the time the app took
    to read it is not the model's latency, and the two clocks differ). A response gives ``completed_at`` only when it
    completed: an incomplete, failed or cancelled one's duration is unknown, and its span an instant (not the hours
    it may have waited to be read). The span ends now, when llmtrace learns of it (block budgets' accounting relies
    on that): it starts this long before."""
    created, completed = _ns(getattr(response, "created_at", None)), _ns(getattr(response, "completed_at", None))
    return max(0, completed - created) if created is not None and completed is not None else 0


def _ns(seconds: Any) -> int | None:
    """A response's time (seconds since the epoch, a float or an int) in nanoseconds."""
    return int(seconds * 1e9) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0 else None


def watched(response: Any) -> Any:
    """What a read of a response returns, watched for one this process waits for: the response (read now), or a
    stream of its events (read as the app iterates)."""
    if not _waiting:
        return response
    with internal_errors():
        if hasattr(type(response), "__stream__"):
            return (AsyncWatchedStream if hasattr(response, "__aiter__") else WatchedStream)(response)
        parse = getattr(response, "parse", None)
        if parse is None:
            observe(response)
        elif type(response).__name__ == "LegacyAPIResponse":  # with_raw_response: read already
            answer = parse()
            if not hasattr(type(answer), "__stream__"):
                observe(answer)
                return response
            return WatchedRawResponse(response)
        else:  # with_streaming_response: what the app's parse() gives is watched
            return (AsyncWatchedRawResponse if inspect.iscoroutinefunction(parse) else WatchedRawResponse)(response)
    return response


class WatchedRawResponse(wrapt.ObjectProxy):
    """A raw response (``with_raw_response`` of a stream, ``with_streaming_response``): its parsed answer is watched.
    (A body the app reads as bytes or JSON itself is not.)"""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return watched(self.__wrapped__.parse(*args, **kwargs))


class AsyncWatchedRawResponse(wrapt.ObjectProxy):
    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return watched(await self.__wrapped__.parse(*args, **kwargs))


def _observe_event(event: Any) -> None:
    """The response an event carries, if any (the created, in-progress and final events do; only a final one is
    finished)."""
    observe(getattr(event, "response", None))


class WatchedStream(wrapt.ObjectProxy):
    """A resumed stream of a response's events: its final event (completed, incomplete, failed) carries the usage.
    Only iteration is watched; everything else (close, the HTTP response) is the stream's own."""

    def __iter__(self) -> Iterator[Any]:
        for event in self.__wrapped__:
            _observe_event(event)
            yield event

    def __next__(self) -> Any:
        event = self.__wrapped__.__next__()
        _observe_event(event)
        return event

    def __enter__(self) -> WatchedStream:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.__wrapped__.__exit__(*exc)


class AsyncWatchedStream(wrapt.ObjectProxy):
    async def __aiter__(self) -> AsyncIterator[Any]:
        async for event in self.__wrapped__:
            _observe_event(event)
            yield event

    async def __anext__(self) -> Any:
        event = await self.__wrapped__.__anext__()
        _observe_event(event)
        return event

    async def __aenter__(self) -> AsyncWatchedStream:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
