"""``llmtrace.tags(...)``: who and what an LLM call is for, carried by contextvars.

Tags live in a contextvar as a ready-made attribute mapping, so the request path copies one dict.
They are also put into OTel baggage, so downstream services that propagate baggage see them.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from types import MappingProxyType, TracebackType
from typing import Any, Callable, Generator, Mapping, NamedTuple, TypeVar

from opentelemetry import baggage
from opentelemetry import context as otel_context

from . import attributes as A

logger = logging.getLogger("llmtrace")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_current: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("llmtrace_tags", default=_EMPTY)


class _Entry(NamedTuple):
    """One entered ``tags`` block, as its own context holds it: what the block set and what its exit restores."""

    owner: tags
    token: contextvars.Token[Mapping[str, str]]
    previous: Mapping[str, str]
    otel_token: object
    otel_previous: otel_context.Context
    # Its tokens restore what it found on entry. Not after a block entered before it ended first (two generators that
    # each tag their steps, read in turns): what it found included that block's tags, which must not come back.
    exact: bool = True


# The blocks entered in this context, innermost last. They live in the context, not on the ``tags`` object, so one
# object can be entered by many threads and tasks at once.
_entered: contextvars.ContextVar[tuple[_Entry, ...]] = contextvars.ContextVar("llmtrace_tags_entered", default=())

F = TypeVar("F", bound=Callable[..., Any])

_NAMED = {"user": A.USER_ID, "tenant": A.TENANT, "feature": A.FEATURE, "session": A.CONVERSATION_ID}


def current_tags() -> Mapping[str, str]:
    """The span attributes the innermost active ``tags()`` blocks set."""
    return _current.get()


class tags:
    """Tag every LLM call made inside this block (or decorated function).

    ``user``, ``tenant``, ``feature`` and ``session`` become ``user.id``, ``llmtrace.tenant``,
    ``llmtrace.feature`` and ``gen_ai.conversation.id``; any other keyword ``x`` becomes
    ``llmtrace.tag.x``. Nested blocks merge, the inner value winning. Works across threads started
    with ``contextvars.copy_context()`` and across asyncio tasks.
    """

    def __init__(
        self,
        *,
        user: str | None = None,
        tenant: str | None = None,
        feature: str | None = None,
        session: str | None = None,
        **extra: Any,
    ) -> None:
        values = {"user": user, "tenant": tenant, "feature": feature, "session": session}
        attrs: dict[str, str] = {}
        for name, value in values.items():
            if value is not None:
                attrs[_NAMED[name]] = str(value)
        for name, value in extra.items():
            if value is not None:
                attrs[A.TAG_PREFIX + name] = str(value)
        self._attrs = attrs

    def __enter__(self) -> tags:
        previous = _current.get()
        otel_previous = otel_context.get_current()
        ctx = otel_previous
        for key, value in self._attrs.items():
            ctx = baggage.set_baggage(key, value, context=ctx)
        otel_token = otel_context.attach(ctx)
        token = _current.set(MappingProxyType({**previous, **self._attrs}))
        _entered.set((*_entered.get(), _Entry(self, token, previous, otel_token, otel_previous)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Never raises: the app's block ends whatever llmtrace's bookkeeping finds.
        entered = _entered.get()
        index = len(entered) - 1  # the innermost, as a rule
        while index >= 0 and entered[index].owner is not self:
            index -= 1
        if index < 0:
            # Left in another context than the one it was entered in (a framework running each step of a generator
            # in a fresh copy of the context, as Starlette does): that context never saw this block's tags.
            logger.debug("llmtrace: a tags() block ended outside the context it began in; nothing to restore")
            return
        entry = entered[index]
        later = [block._replace(exact=False) for block in entered[index + 1 :]]
        if later and index == 0:  # the next block is the outermost now: what there was before this one is its base
            later[0] = later[0]._replace(previous=entry.previous, otel_previous=entry.otel_previous)
        remaining = (*entered[:index], *later)
        _entered.set(remaining)
        if entry.exact and index == len(entered) - 1:
            try:
                _current.reset(entry.token)
                otel_context.detach(entry.otel_token)  # type: ignore[arg-type]
                return
            except ValueError:  # a copy of the entering context: its tokens are not ours to reset
                pass
        _restore_by_value(entry, entered[0], remaining)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            async def async_generator_wrapper(*args: Any, **kwargs: Any) -> Any:
                # The steps of _each_step, here (an async generator cannot delegate with yield from): what the reader
                # sends, throws and closes reaches the app's generator.
                generator = func(*args, **kwargs)
                sent: Any = None
                thrown: BaseException | None = None
                while True:
                    with self:
                        try:
                            item = await (generator.asend(sent) if thrown is None else generator.athrow(thrown))
                        except StopAsyncIteration:
                            return
                    sent, thrown = None, None
                    try:
                        sent = yield item
                    except GeneratorExit:
                        with self:
                            await generator.aclose()
                        raise
                    except BaseException as exc:
                        thrown = exc

            return async_generator_wrapper  # type: ignore[return-value]
        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def generator_wrapper(*args: Any, **kwargs: Any) -> Any:
                return (yield from self._each_step(func(*args, **kwargs)))

            return generator_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                result = func(*args, **kwargs)
            if inspect.iscoroutine(result):  # an async function behind a plain decorator: tagged while it runs
                return self._while_awaited(result)
            return result

        return wrapper  # type: ignore[return-value]

    async def _while_awaited(self, coroutine: Any) -> Any:
        with self:
            return await coroutine

    # A decorated generator's body runs a step at a time, each in its reader's context: the tags hold during each
    # step (the calls it makes), never while it waits at a yield, where they would tag its reader's own calls.

    def _each_step(self, generator: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            with self:
                try:
                    item = generator.send(sent) if thrown is None else generator.throw(thrown)
                except StopIteration as stop:
                    return stop.value
            sent, thrown = None, None
            try:
                sent = yield item
            except GeneratorExit:
                with self:
                    generator.close()
                raise
            except BaseException as exc:
                thrown = exc


def _restore_by_value(entry: _Entry, outermost: _Entry, remaining: tuple[_Entry, ...]) -> None:
    """What the blocks still open say, over what there was before the outermost one (its ``previous``): for a block
    that did not end innermost, or in a copy of the context it began in."""
    merged = dict(outermost.previous)
    for block in remaining:
        merged.update(block.owner._attrs)
    _current.set(MappingProxyType(merged))
    ctx = otel_context.get_current()
    for key in entry.owner._attrs:
        value: object = merged.get(key)
        if value is None:
            value = baggage.get_baggage(key, outermost.otel_previous)
        ctx = baggage.remove_baggage(key, ctx) if value is None else baggage.set_baggage(key, value, context=ctx)
    otel_context.attach(ctx)
