"""Supported SDKs: top-level module name -> adapter module path."""

from __future__ import annotations

PROVIDERS = {
    "openai": "llmtrace.providers.openai",
    "anthropic": "llmtrace.providers.anthropic",
}
