"""wrapt wrapper factories, one per kind of patch target.

The pattern everywhere: llmtrace's own work runs inside ``internal_errors()``; the user's SDK call
runs outside any guard, so its return value and exceptions reach the app untouched.
"""

from __future__ import annotations

import contextvars
import inspect
from typing import Any, Callable

from . import call as core
from . import later
from ._guard import internal_errors, report
from .adapter import (
    ASYNC_CALL,
    ASYNC_LOOKUP,
    ASYNC_STREAM_MANAGER,
    CALL,
    LOOKUP,
    RETRY_HOOK,
    SDK_TRACER,
    STREAM_MANAGER,
    STREAM_OPENER,
    Endpoint,
    Target,
)
from .call import Call, active_call
from .spans import make_current, restore
from .stream import (
    AsyncRawResponseProxy,
    AsyncStreamManagerProxy,
    AsyncStreamProxy,
    ParseProxy,
    RawResponseProxy,
    StreamManagerProxy,
    SyncStreamProxy,
)

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

# Set while a stream manager sends its request: the stream helper's constructor picks it up.
_opening: contextvars.ContextVar[Call | None] = contextvars.ContextVar("llmtrace_opening", default=None)

_SYNC_STREAM, _ASYNC_STREAM, _RAW, _ASYNC_RAW, _LEGACY_RAW, _PLAIN = range(6)
_kinds: dict[type, int] = {}


def _kind_of(cls: type) -> int:
    kind = _kinds.get(cls)
    if kind is None:
        if hasattr(cls, "__stream__"):
            kind = _ASYNC_STREAM if hasattr(cls, "__aiter__") else _SYNC_STREAM
        elif cls.__name__ == "LegacyAPIResponse":
            kind = _LEGACY_RAW
        elif hasattr(cls, "parse") and (hasattr(cls, "iter_bytes") or hasattr(cls, "aiter_bytes")):
            kind = _ASYNC_RAW if inspect.iscoroutinefunction(getattr(cls, "parse")) else _RAW
        else:
            kind = _PLAIN
        _kinds[cls] = kind
    return kind


def _answer_of_raw(response: Any) -> Any:
    """A read raw response's answer: what the SDK's parse() makes of it, or what it answered though parse() refuses
    it (an answer cut at max_tokens, to a ``.parse()`` with a response_format). The app's own parse() raises as it
    would have."""
    try:
        return response.parse()
    except Exception as exc:
        return core.refused_answer(exc, response)


def returned(call: Call, response: Any) -> Any:
    """What the app gets back: the response itself, or a proxy that ends the span later."""
    try:
        kind = _kinds.get(type(response))
        if kind is None:
            kind = _kind_of(type(response))
        if kind == _PLAIN:
            pass  # a whole response: completed below, outside this try (its own errors are contained there)
        elif kind == _SYNC_STREAM:
            return SyncStreamProxy(response, call)
        if kind == _ASYNC_STREAM:
            return AsyncStreamProxy(response, call)
        if kind == _LEGACY_RAW:
            if call.kwargs.get("stream") is True:
                return ParseProxy(response, call)
            # The body is already read and parse() caches its result: reading it costs the app nothing.
            core_retries = getattr(response, "retries_taken", None)
            if isinstance(core_retries, int) and core_retries > call.retries:
                call.retries = core_retries
            call.complete(_answer_of_raw(response))
            return response
        if kind == _RAW:
            return RawResponseProxy(response, call)
        if kind == _ASYNC_RAW:
            return AsyncRawResponseProxy(response, call)
    except Exception as exc:
        report(exc)
        call.end_stream(None)
        return response
    call.complete(response)
    return response


def _start(endpoint: Endpoint, instance: Any, kwargs: dict[str, Any]) -> tuple[Call, dict[str, Any]] | None:
    """The call's span and the kwargs to send; raises ``BudgetExceeded`` (and nothing else) when a block
    budget is spent, so the provider is never called."""
    rt = core.runtime
    if rt is None or active_call.get() is not None:
        return None
    started = None
    refused = None
    try:
        call = Call(endpoint, rt, instance, kwargs)
        started = call, call.request_kwargs()
        if rt.guard is not None:
            refused = call.admit()
    except Exception as exc:
        report(exc)
    if refused is not None and started is not None:
        started[0].fail(refused)  # the span says why the call did not happen
        raise refused
    return started


def _activate(call: Call) -> tuple[contextvars.Token[Any], contextvars.Token[Call | None]]:
    return make_current(call.span), active_call.set(call)


def _deactivate(tokens: tuple[contextvars.Token[Any], contextvars.Token[Call | None]]) -> None:
    restore(tokens[0])
    active_call.reset(tokens[1])


def call_wrapper(endpoint: Endpoint) -> Wrapper:
    def traced(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started = _start(endpoint, instance, kwargs)
        if started is None:
            return wrapped(*args, **kwargs)
        call, send_kwargs = started
        tokens = _activate(call)
        try:
            response = wrapped(*args, **send_kwargs)
        except BaseException as exc:
            _deactivate(tokens)
            call.fail(exc)
            raise
        _deactivate(tokens)
        return returned(call, response)

    return traced


def async_call_wrapper(endpoint: Endpoint) -> Wrapper:
    async def traced(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started = _start(endpoint, instance, kwargs)
        if started is None:
            return await wrapped(*args, **kwargs)
        call, send_kwargs = started
        tokens = _activate(call)
        try:
            response = await wrapped(*args, **send_kwargs)
        except BaseException as exc:
            _deactivate(tokens)
            call.fail(exc)
            raise
        _deactivate(tokens)
        return returned(call, response)

    return traced


def _manager_opener(endpoint: Endpoint, instance: Any, kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    def open_sync(enter: Callable[[], Any]) -> tuple[Call | None, Any]:
        started = _start(endpoint, instance, {**kwargs, "stream": True})
        if started is None:
            return None, enter()
        call = started[0]
        tokens = _activate(call)
        opening = _opening.set(call)
        try:
            result = enter()
        except BaseException as exc:
            _opening.reset(opening)
            _deactivate(tokens)
            call.fail(exc)
            raise
        _opening.reset(opening)
        _deactivate(tokens)
        return call, result

    return open_sync


def _async_manager_opener(endpoint: Endpoint, instance: Any, kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    async def open_async(enter: Callable[[], Any]) -> tuple[Call | None, Any]:
        started = _start(endpoint, instance, {**kwargs, "stream": True})
        if started is None:
            return None, await enter()
        call = started[0]
        tokens = _activate(call)
        opening = _opening.set(call)
        try:
            result = await enter()
        except BaseException as exc:
            _opening.reset(opening)
            _deactivate(tokens)
            call.fail(exc)
            raise
        _opening.reset(opening)
        _deactivate(tokens)
        return call, result

    return open_async


def stream_manager_wrapper(endpoint: Endpoint, is_async: bool) -> Wrapper:
    proxy_cls = AsyncStreamManagerProxy if is_async else StreamManagerProxy
    make_opener = _async_manager_opener if is_async else _manager_opener

    def traced(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        manager = wrapped(*args, **kwargs)
        if core.runtime is None:
            return manager
        with internal_errors():
            return proxy_cls(manager, make_opener(endpoint, instance, kwargs))
        return manager

    return traced


def stream_opener_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    call = _opening.get()
    if call is not None and args:
        with internal_errors():
            _opening.set(None)
            proxy_cls = AsyncStreamProxy if _kind_of(type(args[0])) == _ASYNC_STREAM else SyncStreamProxy
            args = (proxy_cls(args[0], call), *args[1:])
    return wrapped(*args, **kwargs)


def retry_hook_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    # Works for the sync and the async hook alike: the note is taken before the (awaitable) sleep.
    call = active_call.get()
    if call is not None:
        with internal_errors():
            call.note_retry(kwargs.get("response"))
    return wrapped(*args, **kwargs)


def lookup_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return later.watched(wrapped(*args, **kwargs))


async def async_lookup_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    return later.watched(await wrapped(*args, **kwargs))


def sdk_tracer_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    # No tracer for the SDK within a call llmtrace traces (its span is the call's span); its spans of everything else
    # stay: count_tokens, Message Batches, the tool runner's invoke_agent and execute_tool (which then parent the
    # spans of the calls the runner makes).
    rt = core.runtime
    if rt is not None and rt.settings.disable_sdk_tracing and active_call.get() is not None:
        return None
    return wrapped(*args, **kwargs)


def wrapper_for(target: Target) -> Wrapper:
    kind = target.kind
    if kind == CALL:
        return call_wrapper(target.endpoint)  # type: ignore[arg-type]
    if kind == ASYNC_CALL:
        return async_call_wrapper(target.endpoint)  # type: ignore[arg-type]
    if kind in (STREAM_MANAGER, ASYNC_STREAM_MANAGER):
        return stream_manager_wrapper(target.endpoint, kind == ASYNC_STREAM_MANAGER)  # type: ignore[arg-type]
    if kind == STREAM_OPENER:
        return stream_opener_wrapper
    if kind == RETRY_HOOK:
        return retry_hook_wrapper
    if kind == SDK_TRACER:
        return sdk_tracer_wrapper
    if kind == LOOKUP:
        return lookup_wrapper
    if kind == ASYNC_LOOKUP:
        return async_lookup_wrapper
    raise ValueError(f"unknown target kind {kind!r}")
