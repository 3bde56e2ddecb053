"""Anthropic requests and responses in the conventions' message form (llmtrace.content), for content capture.

A message's content is a string or a list of blocks, plain dicts or the SDK's models (``get`` reads both); the
same block types appear in requests (history) and answers.
"""

from __future__ import annotations

from typing import Any, Mapping

from .. import content as C
from ._stainless import get


def _source_part(block: Any, modality: str) -> C.Part:
    source = get(block, "source")
    kind = get(source, "type")
    if kind == "base64" and isinstance(data := get(source, "data"), str):
        media_type = get(source, "media_type")
        return C.blob(modality, media_type if isinstance(media_type, str) else None, data)
    if kind == "url" and isinstance(url := get(source, "url"), str):
        return C.media(modality, url)
    if kind == "file" and isinstance(file_id := get(source, "file_id"), str):
        return C.file(modality, file_id)
    return C.generic(block)


def block_part(block: Any) -> C.Part:
    kind = get(block, "type")
    if kind == "text" and isinstance(text := get(block, "text"), str):
        return C.text(text)
    if kind == "thinking" and isinstance(thinking := get(block, "thinking"), str):
        return C.reasoning(thinking)
    if isinstance(kind, str) and kind.endswith("tool_use"):  # the app's tools, and those the server runs
        return C.tool_call(get(block, "id"), get(block, "name"), get(block, "input"))
    if kind == "tool_result":
        return C.tool_call_response(get(block, "tool_use_id"), _content(get(block, "content")))
    if kind == "image":
        return _source_part(block, "image")
    if kind == "document":
        return _source_part(block, "document")
    return C.generic(block)


def _content(content: Any) -> Any:
    """A tool result's content: its text, or its blocks as parts."""
    if content is None or isinstance(content, str):
        return content
    return _parts(content)


def _parts(content: Any) -> list[C.Part]:
    if isinstance(content, str):
        return [C.text(content)]
    return [block_part(block) for block in C.sequence(content) or ()]


def request_content(kwargs: Mapping[str, Any]) -> dict[str, str]:
    read = C.sequence(kwargs.get("messages"))
    messages = [C.message(get(m, "role"), _parts(get(m, "content"))) for m in read] if read is not None else None
    return C.input_attributes(messages, _parts(kwargs.get("system")), C.sequence(kwargs.get("tools")))


def response_output(content: Any, stop_reason: str | None) -> list[C.Message]:
    return [C.output(_parts(content), stop_reason)]
