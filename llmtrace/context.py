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
from typing import Any, Callable, Mapping, NamedTuple, TypeVar

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
        if not entered or entered[-1].owner is not self:
            # Left in another context than the one it was entered in (a framework running each step of a generator
            # in a fresh copy of the context, as Starlette does): that context never saw this block's tags.
            logger.debug("llmtrace: a tags() block ended outside the context it began in; nothing to restore")
            return
        entry = entered[-1]
        _entered.set(entered[:-1])
        try:
            _current.reset(entry.token)
        except ValueError:  # a copy of the entering context: restore by value, its tokens are not ours to reset
            _current.set(entry.previous)
            otel_context.attach(entry.otel_previous)
            return
        otel_context.detach(entry.otel_token)  # type: ignore[arg-type]

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
