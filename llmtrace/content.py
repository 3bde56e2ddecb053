"""Prompts and answers in the GenAI conventions' message form, for content capture (off by default).

``gen_ai.input.messages`` and ``gen_ai.output.messages`` hold JSON lists of messages: ``{"role", "parts"}``, where
an output message adds ``finish_reason`` (one message per choice). ``gen_ai.system_instructions`` holds a list of
parts. A part is ``{"type": ...}``: ``text``, ``tool_call``, ``tool_call_response``, ``reasoning``, ``blob``, ``uri``
or ``file``. A provider's block with no such form passes through whole as a generic part under its own ``type``.
Left out: citations and annotations beside a text, and an audio answer's sound (its transcript is a text part). The
provider adapters translate their SDK's shapes with these builders.
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import attributes as A

Part = dict[str, Any]
Message = dict[str, Any]


def sequence(value: Any) -> list[Any] | tuple[Any, ...] | None:
    """A request's list, to read. Only lists and tuples: any other iterable may be one-shot, and the SDK has yet to
    send it (reading it here would send the provider nothing)."""
    return value if isinstance(value, (list, tuple)) else None


def text(content: str) -> Part:
    return {"type": "text", "content": content}


def reasoning(content: str) -> Part:
    return {"type": "reasoning", "content": content}


def tool_call(call_id: Any, name: Any, arguments: Any) -> Part:
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": _decoded(arguments)}


def tool_call_response(call_id: Any, response: Any) -> Part:
    return {"type": "tool_call_response", "id": call_id, "response": response}


def blob(modality: str, mime_type: str | None, data: str) -> Part:
    """Inline media, base64 as the provider took it; past ``_LONG_STRING`` characters, its size instead (a photo or a
    PDF would make the span too large to export, and every span sent with it would be lost)."""
    if len(data) > _LONG_STRING:
        return {"type": "blob", "modality": modality, "mime_type": mime_type, "content": "", "content_omitted": len(data)}
    return {"type": "blob", "modality": modality, "mime_type": mime_type, "content": data}


def inline(modality: str, data: str) -> Part:
    """A file sent inline: a ``data:`` URL, or bare base64."""
    return media(modality, data) if data.startswith("data:") else blob(modality, None, data)


def file(modality: str, file_id: str) -> Part:
    return {"type": "file", "modality": modality, "file_id": file_id}


def media(modality: str, url: str) -> Part:
    """A URL to media: a ``data:`` URL carries the media itself (a blob), any other is a ``uri`` part."""
    if url.startswith("data:") and "," in url:
        header, _, data = url[5:].partition(",")
        return blob(modality, header.split(";", 1)[0] or None, data)
    return {"type": "uri", "modality": modality, "uri": url}


def generic(block: Any) -> Part:
    """A provider block with no form of its own here, whole: its ``type`` names the part."""
    dumped = block.model_dump(exclude_none=True) if hasattr(block, "model_dump") else block
    if isinstance(dumped, dict) and isinstance(dumped.get("type"), str):
        return dict(dumped)  # a copy: never the app's own dict
    return {"type": "unknown", "content": dumped}


def message(role: Any, parts: list[Part], name: Any = None) -> Message:
    out: Message = {"role": role if isinstance(role, str) else "user", "parts": parts}
    if isinstance(name, str):
        out["name"] = name
    return out


def output(parts: list[Part], finish_reason: str | None) -> Message:
    # The conventions require a finish reason; a stream cut short has none yet.
    return {"role": "assistant", "parts": parts, "finish_reason": finish_reason or ""}


def generated_text(messages: list[Message]) -> str:
    """All the text output messages hold (answers, reasoning, tool-call arguments): what an output estimate counts."""
    pieces = []
    for m in messages:
        for part in m["parts"]:
            kind = part.get("type")
            if kind == "text" or kind == "reasoning":
                pieces.append(part["content"])
            elif kind == "tool_call" and part["arguments"] is not None:
                arguments = part["arguments"]
                # Models write compact JSON; decoded arguments are re-encoded so, for the estimate.
                pieces.append(arguments if isinstance(arguments, str) else to_json(arguments, compact=True))
    return "".join(pieces)


# Captured content goes out in span attributes, and an export request past a collector's size limit (4 MiB over gRPC
# by default, 20 MiB over HTTP) fails whole, losing every span sent with it: an attribute past MAX_CONTENT_CHARS has
# its long strings (a pasted document, an unknown block's data) cut to their first _KEPT characters.
MAX_CONTENT_CHARS = 256 * 1024
_LONG_STRING = 16 * 1024
_KEPT = 1024


def to_json(value: Any, compact: bool = False) -> str:
    """Captured content as an attribute value: JSON text, SDK models dumped, anything else as its ``str``; long
    strings cut past MAX_CONTENT_CHARS in all; valid UTF-8 (a lone surrogate, which no exporter or store can encode,
    becomes "?")."""
    encoded = _dumps(value, compact)
    if len(encoded) > MAX_CONTENT_CHARS:
        encoded = _dumps(_shortened(value), compact)
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:
        encoded = encoded.encode("utf-8", "replace").decode("utf-8")
    return encoded


def _dumps(value: Any, compact: bool) -> str:
    return json.dumps(value, default=_plain, ensure_ascii=False, separators=(",", ":") if compact else None)


def _plain(value: Any) -> Any:
    return getattr(value, "model_dump", lambda: str(value))()


def _shortened(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= _LONG_STRING else f"{value[:_KEPT]}…[{len(value) - _KEPT:,} characters not captured]"
    if isinstance(value, dict):
        return {key: _shortened(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shortened(item) for item in value]
    return _shortened(_plain(value)) if hasattr(value, "model_dump") else value


def _decoded(arguments: Any) -> Any:
    """Tool arguments arrive as JSON text; recorded as the object (or list) they encode, and as the text when they
    encode anything else (a custom tool's free-form input: "1.10" stays "1.10", "null" stays), are not JSON (a stream
    cut mid-call) or hold a number JSON cannot carry (1e400, NaN)."""
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments, parse_float=_finite, parse_constant=_not_a_number)
        except Exception:  # not JSON (ValueError), or nested past the parser's depth (RecursionError)
            return arguments
        return decoded if isinstance(decoded, (dict, list)) else arguments
    return arguments


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"{literal} is not a finite number")
    return number


def _not_a_number(literal: str) -> float:
    raise ValueError(f"{literal} is not a number JSON allows")


def input_attributes(messages: list[Message] | None, system: list[Part] | None = None, tools: Any = None) -> dict[str, str]:
    """A request's captured content as span attributes (messages None: not readable, see ``sequence``)."""
    attrs = {}
    if messages is not None:
        attrs[A.INPUT_MESSAGES] = to_json(messages)
    if system:
        attrs[A.SYSTEM_INSTRUCTIONS] = to_json(system)
    if tools:
        attrs[A.TOOL_DEFINITIONS] = to_json(tools)
    return attrs
