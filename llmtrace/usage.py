"""Token usage in disjoint buckets, so nothing is counted twice.

``uncached_input + cache_read + cache_write`` is all input; ``visible_output + reasoning`` is all output.
The semantic-convention totals are derived from the buckets, the same way for every provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import attributes as A


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which costs ~1 µs per
# call on the request path. Treat instances as immutable all the same.
@dataclass(slots=True)
class Usage:
    uncached_input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    visible_output: int = 0
    reasoning: int = 0
    source: str = A.SOURCE_PROVIDER
    # Not a bucket: the part of ``cache_write`` written with a 1-hour TTL (Anthropic), priced higher.
    cache_write_1h: int = 0
    # False when the output held reasoning the provider did not count apart: ``visible_output`` then holds it too,
    # and the reasoning count is left out of the attributes rather than reported as 0.
    reasoning_known: bool = True
    # Not tokens: searches the provider's server-side web search tool ran for the call (Anthropic's
    # ``server_tool_use``, OpenAI's ``web_search_call`` items), billed per search; and calls of OpenAI's hosted
    # file search (``file_search_call`` items), billed per call.
    web_searches: int = 0
    file_searches: int = 0
    # Not buckets: the parts of all input and of all output that are audio (OpenAI's audio models), priced at
    # audio rates where the price list has them.
    input_audio: int = 0
    output_audio: int = 0
    # Set when the call ran several model passes billed each as a call of its own (Anthropic's server-side
    # compaction before the answer): their usages, which these buckets add up. Each is priced at the rates its own
    # input size takes, where rates depend on it (Claude's above 200k input tokens), not at those of their sum.
    passes: tuple[Usage, ...] = ()

    @property
    def input_tokens(self) -> int:
        return self.uncached_input + self.cache_read + self.cache_write

    @property
    def output_tokens(self) -> int:
        return self.visible_output + self.reasoning

    @classmethod
    def from_totals(
        cls,
        *,
        input_total: int,
        output_total: int,
        cache_read: int = 0,
        cache_write: int = 0,
        reasoning: int = 0,
        source: str = A.SOURCE_PROVIDER,
        input_audio: int = 0,
        output_audio: int = 0,
    ) -> Usage:
        """Build from totals that *include* their subsets (OpenAI's way of reporting)."""
        # Conditional expressions, not max() and min(): this runs on every call.
        uncached = input_total - cache_read - cache_write
        visible = output_total - reasoning
        return cls(
            uncached_input=uncached if uncached > 0 else 0,
            cache_read=cache_read,
            cache_write=cache_write,
            visible_output=visible if visible > 0 else 0,
            reasoning=reasoning,
            source=source,
            input_audio=input_audio if input_audio < input_total else input_total,
            output_audio=output_audio if output_audio < output_total else output_total,
        )

    def add_attributes(self, attrs: dict[str, Any], generates: bool = True) -> None:
        """Put the usage attributes into ``attrs`` (a call's end attributes). ``generates``: False for an operation with
        no output (embeddings), whose usage is its input alone."""
        attrs[A.USAGE_INPUT_TOKENS] = self.uncached_input + self.cache_read + self.cache_write  # input_tokens, inlined
        attrs[A.USAGE_UNCACHED_INPUT_TOKENS] = self.uncached_input
        attrs[A.USAGE_SOURCE] = self.source
        if not generates:
            return
        attrs[A.USAGE_OUTPUT_TOKENS] = self.visible_output + self.reasoning
        attrs[A.USAGE_CACHE_READ_INPUT_TOKENS] = self.cache_read
        attrs[A.USAGE_CACHE_CREATION_INPUT_TOKENS] = self.cache_write
        if self.reasoning_known:
            attrs[A.USAGE_REASONING_OUTPUT_TOKENS] = self.reasoning
        attrs[A.USAGE_VISIBLE_OUTPUT_TOKENS] = self.visible_output
        if self.web_searches:
            attrs[A.USAGE_WEB_SEARCHES] = self.web_searches
        if self.file_searches:
            attrs[A.USAGE_FILE_SEARCHES] = self.file_searches
        if self.input_audio:
            attrs[A.USAGE_INPUT_AUDIO_TOKENS] = self.input_audio
        if self.output_audio:
            attrs[A.USAGE_OUTPUT_AUDIO_TOKENS] = self.output_audio


def as_int(value: object) -> int:
    """A provider's token count as an int; anything malformed counts as 0."""
    # ``type() is int`` also turns bools away; SDK models hold plain ints.
    return value if type(value) is int and value > 0 else 0
