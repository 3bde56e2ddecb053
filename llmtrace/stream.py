"""Proxies around SDK streams and raw responses that end the call's span exactly once.

A proxy behaves like the object it wraps (``isinstance`` still holds; attributes pass through).
The span ends on exhaustion, ``close()``, context exit, an exception mid-stream, an early ``break``
(the iterator is closed), or - for a stream dropped unconsumed - when the proxy is collected.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import sys
import threading
import weakref
from typing import Any, AsyncIterable, AsyncIterator, Callable, Iterable, Iterator

import wrapt

from ._guard import internal_errors, report
from .call import Call, refused_answer
from .sse import EventReader


# A stream dropped in a reference cycle is collected wherever the garbage collector happens to run: on any thread,
# inside any allocation, perhaps one made while that thread holds a lock that ending the span needs (llmtrace's own,
# or the OpenTelemetry SDK's around a metric): ended there, it would wait for that lock forever. One collected so is
# ended on a thread of its own (put() on a SimpleQueue is safe from a finalizer); one whose last reference goes (the
# common case), at once; one the app still holds at exit, by end_open_streams().
_collecting_on: int | None = None  # the thread running a garbage collection (Python runs one at a time), if any
_collected: queue.SimpleQueue[Call] = queue.SimpleQueue()
_ender_pid = 0  # the process whose ender thread runs (a forked child has none)
_ender_lock = threading.Lock()
# The finalizers of the streams not collected yet, by their call's id: at exit, however the process ends (a SIGTERM,
# a multiprocessing child's end, which skip the finalizers' own exit hook) and in whatever order exit hooks run, the
# calls still open end before the store and the exporters stop.
_open: dict[int, weakref.finalize] = {}


def _note_collection(phase: str, info: dict[str, Any]) -> None:
    global _collecting_on
    _collecting_on = threading.get_ident() if phase == "start" else None


gc.callbacks.append(_note_collection)


def _abandoned(call: Call) -> None:
    _open.pop(id(call), None)
    if _collecting_on == threading.get_ident():  # not another thread's collection (at exit, one may be under way)
        _collected.put(call)
    else:
        call.end_stream(None)


def _end_when_collected(proxy: object, call: Call) -> weakref.finalize:
    global _ender_pid
    if _ender_pid != os.getpid():  # started here, never from a finalizer: starting a thread takes locks too
        with _ender_lock:
            if _ender_pid != os.getpid():
                threading.Thread(target=_end_collected_forever, name="llmtrace-stream-ender", daemon=True).start()
                _ender_pid = os.getpid()
    finalizer = _open[id(call)] = weakref.finalize(proxy, _abandoned, call)
    return finalizer


def _detach(finalizer: weakref.finalize) -> None:
    """The call ends otherwise: its proxy's collection no longer ends it."""
    held = finalizer.detach()
    if held is not None:
        _open.pop(id(held[2][0]), None)


def end_open_streams() -> None:
    """At exit: end the calls of the streams the app still holds (each ends once: one already ended is left)."""
    for finalizer in list(_open.values()):
        with internal_errors():
            finalizer()


def _end_collected_forever() -> None:
    while True:
        _end_collected(_collected.get())


def end_collected() -> None:
    """End, on this thread, the streams the garbage collector has handed to the ender thread and it has not ended
    yet: before a flush, and at exit."""
    while True:
        try:
            _end_collected(_collected.get_nowait())
        except queue.Empty:
            return


def _end_collected(call: Call) -> None:
    with internal_errors():
        call.end_stream(None)


def _new_queue_in_child() -> None:
    # The parent's calls end in the parent (the child's copies of their streams end none at its exit); a lock another
    # of its threads held at the fork stays held in the child.
    global _collected, _ender_lock
    _collected = queue.SimpleQueue()
    _ender_lock = threading.Lock()
    for finalizer in list(_open.values()):
        finalizer.detach()
    _open.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_queue_in_child)


# Where a loop over a stream stops (a break, or its iterator dropped: GeneratorExit), the span does not end: the app
# may read on with another loop, or next(), on the same stream (a peek at the first chunk, then the rest), and the
# usage comes last. It ends when the stream is exhausted, closed or exited, or else when the stream is collected (a
# local variable: as its function returns). Ended then, not backdated: a block budget's refresh counts a call in the
# store only once it has ended by the refresh's snapshot (llmtrace.query._per_budget_key).


def _observed(
    items: Iterable[Any], call: Call, add: Callable[[Any], bool], proxy: object, end: Callable[[], None] | None = None
) -> Iterator[Any]:
    """A stream's items, each seen by ``add`` first (False: hidden from the app); the span ends as the note above says.
    ``proxy`` lives as long as the loop: collected, it would end the span (``for chunk in create(stream=True)``
    holds nothing else of it). ``end``: told when the items are exhausted, before the span ends."""
    try:
        for item in items:
            try:
                show = add(item)  # per-chunk work kept to one call: this loop runs for every token
            except Exception as exc:
                report(exc)
                show = True
            if show:
                try:
                    yield item
                except GeneratorExit:
                    raise  # see the note above
                except BaseException:
                    call.end_stream(None)  # thrown in where the app reads (throw()): not the call failing
                    raise
    except GeneratorExit:
        raise
    except BaseException as exc:
        call.end_stream(exc)
        raise
    if end is not None:
        with internal_errors():
            end()
    call.end_stream(None)


async def _async_observed(
    items: AsyncIterable[Any],
    call: Call,
    add: Callable[[Any], bool],
    proxy: object,
    end: Callable[[], None] | None = None,
) -> AsyncIterator[Any]:
    """``_observed`` for an async stream."""
    try:
        async for item in items:
            try:
                show = add(item)
            except Exception as exc:
                report(exc)
                show = True
            if show:
                try:
                    yield item
                except GeneratorExit:
                    raise
                except BaseException:
                    # Thrown in where the app reads: asyncio.run() ending with this generator not yet closed
                    # (CancelledError). Not the call failing.
                    call.end_stream(None)
                    raise
    except GeneratorExit:
        raise
    except BaseException as exc:
        call.end_stream(exc)
        raise
    if end is not None:
        with internal_errors():
            end()
    call.end_stream(None)


class SyncStreamProxy(wrapt.ObjectProxy):
    def __init__(self, stream: Any, call: Call) -> None:
        super().__init__(stream)
        call.begin_stream()
        self._self_call = call
        self._self_finalizer = _end_when_collected(self, call)

    def __iter__(self) -> Iterator[Any]:
        call = self._self_call
        return _observed(self.__wrapped__, call, call.begin_stream().add, self)

    def __next__(self) -> Any:
        call = self._self_call
        while True:
            try:
                item = self.__wrapped__.__next__()
            except StopIteration:
                call.end_stream(None)
                raise
            except BaseException as exc:
                call.end_stream(exc)
                raise
            if call.observe_chunk(item):
                return item

    def __enter__(self) -> SyncStreamProxy:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        # ``exc`` is the app's own: an error of the stream's reached the span where the stream raised it.
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            self._self_call.end_stream(None)

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_call.end_stream(None)

    @property
    def response(self) -> Any:
        return _StreamResponse(self.__wrapped__.response, self._self_call)


class _StreamResponse(wrapt.ObjectProxy):
    """A stream's HTTP response. The SDK's stream helpers (``chat.completions.stream``, ``responses.stream``)
    end a stream the app left early by closing this directly, not the stream: that ends the call's span too."""

    def __init__(self, response: Any, call: Call) -> None:
        super().__init__(response)
        self._self_call = call

    def close(self) -> Any:
        try:
            return self.__wrapped__.close()
        finally:
            self._self_call.end_stream(_raised_by_the_sdk(sys.exc_info()[1]))

    async def aclose(self) -> Any:
        try:
            return await self.__wrapped__.aclose()
        finally:
            self._self_call.end_stream(_raised_by_the_sdk(sys.exc_info()[1]))


def _raised_by_the_sdk(error: BaseException | None) -> BaseException | None:
    """The error a helper is closing its stream for (the ``with`` block's exit runs while it is handled), when the SDK
    raised it: an answer cut at max_tokens for a response_format (``LengthFinishReasonError``), one pydantic refused.
    The call failed as the app sees it, as the same answer through ``parse()`` does. Not the app's own errors (raised
    in its code: the app stopped reading), nor a cancellation or Ctrl-C (never a failure of the call)."""
    if not isinstance(error, Exception):
        return None
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_globals.get("__name__", "").startswith(_SDK_PACKAGES):
            return error
        frame = frame.tb_next
    return None


_SDK_PACKAGES = ("openai.", "anthropic.")


class AsyncStreamProxy(wrapt.ObjectProxy):
    def __init__(self, stream: Any, call: Call) -> None:
        super().__init__(stream)
        call.begin_stream()
        self._self_call = call
        self._self_finalizer = _end_when_collected(self, call)

    def __aiter__(self) -> AsyncIterator[Any]:
        call = self._self_call
        return _async_observed(self.__wrapped__, call, call.begin_stream().add, self)

    async def __anext__(self) -> Any:
        call = self._self_call
        while True:
            try:
                item = await self.__wrapped__.__anext__()
            except StopAsyncIteration:
                call.end_stream(None)
                raise
            except BaseException as exc:
                call.end_stream(exc)
                raise
            if call.observe_chunk(item):
                return item

    async def __aenter__(self) -> AsyncStreamProxy:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        # ``exc`` is the app's own: an error of the stream's reached the span where the stream raised it.
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            self._self_call.end_stream(None)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_call.end_stream(None)

    @property
    def aclose(self) -> Any:
        # Only where the SDK's stream has one: an app testing hasattr(stream, "aclose") must find what it would.
        if not hasattr(self.__wrapped__, "aclose"):
            raise AttributeError("aclose")
        return self._self_aclose

    async def _self_aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_call.end_stream(None)

    @property
    def response(self) -> Any:
        return _StreamResponse(self.__wrapped__.response, self._self_call)


class ParseProxy(wrapt.ObjectProxy):
    """A raw response whose span ends when ``parse()`` is read (or the proxy collected): openai's legacy
    ``with_raw_response`` of a stream, whose ``text``, ``content`` and the rest stay the SDK's own."""

    def __init__(self, response: Any, call: Call) -> None:
        super().__init__(response)
        self._self_call = call
        self._self_finalizer = _end_when_collected(self, call)

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            parsed = self.__wrapped__.parse(*args, **kwargs)
        except Exception as exc:
            self._self_parse_refused(exc, seen_by_app=True)
            raise
        return self._self_call_parsed(parsed)

    def _self_call_parsed(self, parsed: Any) -> Any:
        from .wrappers import returned  # circular: wrappers builds these proxies

        # The call now ends with what parse() gave: a whole answer at once, a stream through its own proxy. This
        # raw response may be dropped first (``with_raw_response.create(stream=True).parse()`` in one expression).
        _detach(self._self_finalizer)
        return returned(self._self_call, parsed)

    def _self_body_is_whole(self) -> bool:
        return not self._self_call.done and self._self_call.kwargs.get("stream") is not True

    def _self_parse_refused(self, error: Exception, seen_by_app: bool) -> None:
        """parse() refused a whole body (an answer cut at max_tokens, to a ``.parse()`` with a response_format): the
        provider billed it all the same. The span fails only where the app saw the error. (A stream's parse()
        failing leaves no body to read: its span ends at close or collection.)"""
        with internal_errors():
            if not self._self_body_is_whole():
                return
            call = self._self_call
            answer = refused_answer(error, self.__wrapped__)
            if seen_by_app:
                call.fail(error, answer)
            else:
                call.complete(answer)


class RawResponseProxy(ParseProxy):
    """``with_raw_response`` / ``with_streaming_response``: the span ends when ``parse()`` is read, or, for a
    response that is not a stream, when the app reads the body itself (``read()``, ``text()``, ``json()``)."""

    def read(self) -> Any:
        body = self.__wrapped__.read()
        self._self_read_whole_body()
        return body

    def text(self) -> Any:
        body = self.__wrapped__.text()
        self._self_read_whole_body()
        return body

    def json(self) -> Any:
        body = self.__wrapped__.json()
        self._self_read_whole_body()
        return body

    # A whole body read in pieces (a proxy passing it on): the pieces are kept, and read as the answer at the end.

    def iter_bytes(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._self_whole_in_pieces(self.__wrapped__.iter_bytes(*args, **kwargs), b"")

    def iter_text(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._self_whole_in_pieces(self.__wrapped__.iter_text(*args, **kwargs), "")

    def iter_lines(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._self_whole_in_pieces(self.__wrapped__.iter_lines(*args, **kwargs), "\n")

    def _self_whole_in_pieces(self, pieces: Iterator[Any], joiner: Any) -> Iterator[Any]:
        if not self._self_body_is_whole():
            yield from self._self_stream_in_pieces(pieces, joiner)
            return
        kept = []
        for piece in pieces:
            kept.append(piece)
            yield piece
        self._self_complete_with(joiner.join(kept))

    # A stream read in pieces (an SSE pass-through): the events are read as they pass, and the span ends as the
    # stream proxy's does (exhausted, failed, or else closed or collected: see the note above _abandoned).

    def _self_event_reader(self, joiner: Any) -> EventReader | None:
        call = self._self_call
        rule = call.endpoint.raw_event
        if call.done or rule is None:
            return None
        try:
            observe = call.begin_stream().add
        except Exception as exc:
            report(exc)
            return None
        return EventReader(rule, observe, call.fail_stream, lines=joiner == "\n")  # iter_lines(): its ending cut off

    def _self_stream_in_pieces(self, pieces: Iterator[Any], joiner: Any) -> Iterator[Any]:
        reader = self._self_event_reader(joiner)
        return pieces if reader is None else _observed(pieces, self._self_call, reader.read, self, reader.end)

    def _self_complete_with(self, body: Any) -> None:
        with internal_errors():
            if self._self_body_is_whole():
                _detach(self._self_finalizer)
                self._self_call.complete(json.loads(body))

    def _self_read_whole_body(self) -> None:
        # The SDK's parse() reads the body already read and caches its result: a later parse() by the app
        # costs nothing more.
        if self._self_body_is_whole():
            try:
                parsed = self.__wrapped__.parse()
            except Exception as exc:
                self._self_parse_refused(exc, seen_by_app=False)
                return
            self._self_call_parsed(parsed)

    def close(self) -> Any:
        try:
            return self.__wrapped__.close()
        finally:
            self._self_call.end_stream(None)


class AsyncRawResponseProxy(RawResponseProxy):
    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            parsed = await self.__wrapped__.parse(*args, **kwargs)
        except Exception as exc:
            self._self_parse_refused(exc, seen_by_app=True)
            raise
        return self._self_call_parsed(parsed)

    async def read(self) -> Any:
        body = await self.__wrapped__.read()
        await self._self_read_whole_body()
        return body

    async def text(self) -> Any:
        body = await self.__wrapped__.text()
        await self._self_read_whole_body()
        return body

    async def json(self) -> Any:
        body = await self.__wrapped__.json()
        await self._self_read_whole_body()
        return body

    def iter_bytes(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_async_whole_in_pieces(self.__wrapped__.iter_bytes(*args, **kwargs), b"")

    def iter_text(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_async_whole_in_pieces(self.__wrapped__.iter_text(*args, **kwargs), "")

    def iter_lines(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_async_whole_in_pieces(self.__wrapped__.iter_lines(*args, **kwargs), "\n")

    async def _self_async_whole_in_pieces(self, pieces: AsyncIterator[Any], joiner: Any) -> AsyncIterator[Any]:
        if not self._self_body_is_whole():
            async for piece in self._self_async_stream_in_pieces(pieces, joiner):
                yield piece
            return
        kept = []
        async for piece in pieces:
            kept.append(piece)
            yield piece
        self._self_complete_with(joiner.join(kept))

    def _self_async_stream_in_pieces(self, pieces: AsyncIterator[Any], joiner: Any) -> AsyncIterator[Any]:
        reader = self._self_event_reader(joiner)
        return pieces if reader is None else _async_observed(pieces, self._self_call, reader.read, self, reader.end)

    async def _self_read_whole_body(self) -> None:  # type: ignore[override]
        if self._self_body_is_whole():
            try:
                parsed = await self.__wrapped__.parse()
            except Exception as exc:
                self._self_parse_refused(exc, seen_by_app=False)
                return
            self._self_call_parsed(parsed)

    async def close(self) -> Any:
        try:
            return await self.__wrapped__.close()
        finally:
            self._self_call.end_stream(None)


class StreamManagerProxy(wrapt.ObjectProxy):
    """anthropic ``messages.stream(...)``: the request is sent (and the span opened) on enter."""

    def __init__(self, manager: Any, opener: Any) -> None:
        super().__init__(manager)
        self._self_opener = opener
        self._self_call: Call | None = None

    def __enter__(self) -> Any:
        self._self_call, result = self._self_opener(self.__wrapped__.__enter__)
        return result

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            if self._self_call is not None:
                self._self_call.end_stream(exc)


class AsyncStreamManagerProxy(StreamManagerProxy):
    async def __aenter__(self) -> Any:
        self._self_call, result = await self._self_opener(self.__wrapped__.__aenter__)
        return result

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            if self._self_call is not None:
                self._self_call.end_stream(exc)
