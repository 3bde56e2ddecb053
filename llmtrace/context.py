"""``llmtrace.tags(...)``: who and what an LLM call is for, carried by contextvars.

Tags live in a contextvar as a ready-made attribute mapping, so the request path copies one dict.
They are also put into OTel baggage, so downstream services that propagate baggage see them.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from types import MappingProxyType, TracebackType
from typing import Any, Callable, Mapping, TypeVar

from opentelemetry import baggage
from opentelemetry import context as otel_context

from . import attributes as A

_EMPTY: Mapping[str, str] = MappingProxyType({})
_current: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("llmtrace_tags", default=_EMPTY)

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
        self._tokens: list[tuple[contextvars.Token[Mapping[str, str]], object]] = []

    def __enter__(self) -> tags:
        merged = MappingProxyType({**_current.get(), **self._attrs})
        ctx = otel_context.get_current()
        for key, value in self._attrs.items():
            ctx = baggage.set_baggage(key, value, context=ctx)
        otel_token = otel_context.attach(ctx)
        self._tokens.append((_current.set(merged), otel_token))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        token, otel_token = self._tokens.pop()
        otel_context.detach(otel_token)  # type: ignore[arg-type]
        _current.reset(token)

    def _fresh(self) -> tags:
        # A decorated function may run concurrently in many threads/tasks: each call needs its own tokens.
        clone = tags()
        clone._attrs = self._attrs
        return clone

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
