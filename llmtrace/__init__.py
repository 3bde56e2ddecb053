"""llmtrace: OpenTelemetry spans, tokens and USD cost for every LLM call, from one line.

    import llmtrace
    llmtrace.instrument()

    with llmtrace.tags(tenant="acme", feature="search", user="u-42"):
        client.chat.completions.create(...)
"""

from __future__ import annotations

from ._version import __version__
from .budgets import BudgetExceeded
from .config import ConfigError
from .context import tags
from .instrumentation import flush, instrument, uninstrument

__all__ = ["BudgetExceeded", "ConfigError", "__version__", "flush", "instrument", "tags", "uninstrument"]
