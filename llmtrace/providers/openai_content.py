"""OpenAI requests and responses in the conventions' message form (llmtrace.content), for content capture.

Messages may be plain dicts (the SDK's TypedDicts) or the SDK's own models (an answer passed back as history):
``get`` reads both.
"""

from __future__ import annotations

from typing import Any, Mapping

from .. import content as C
from ._stainless import get, string


# --- chat completions ------------------------------------------------------------------------------


def _chat_part(part: Any) -> C.Part:
    kind = get(part, "type")
    if kind == "text" and (text := string(get(part, "text"))) is not None:
        return C.text(text)
    if kind == "refusal" and (refusal := string(get(part, "refusal"))) is not None:
        return C.text(refusal)
    if kind == "image_url" and (url := string(get(get(part, "image_url"), "url"))) is not None:
        return C.media("image", url)
    if kind == "input_audio":
        audio = get(part, "input_audio")
        if (data := string(get(audio, "data"))) is not None:
            audio_format = string(get(audio, "format"))
            return C.blob("audio", f"audio/{audio_format}" if audio_format else None, data)
    if kind == "file":
        attached = get(part, "file")
        if (file_id := string(get(attached, "file_id"))) is not None:
            return C.file("document", file_id)
        if (data := string(get(attached, "file_data"))) is not None:
            return C.inline("document", data)
    return C.generic(part)


def _chat_parts(content: Any) -> list[C.Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [C.text(content)]
    if (parts := C.sequence(content)) is not None:
        return [_chat_part(part) for part in parts]
    return [C.generic(content)]


def _chat_tool_call(call: Any) -> C.Part:
    function = get(call, "function")
    if function is not None:
        return C.tool_call(get(call, "id"), get(function, "name"), get(function, "arguments"))
    custom = get(call, "custom")
    if custom is not None:
        return C.tool_call(get(call, "id"), get(custom, "name"), get(custom, "input"))
    return C.generic(call)


def chat_message(message: Any) -> C.Message:
    """A chat message, from the request's history or a response's choice: the same shape either way."""
    role = get(message, "role")
    content = get(message, "content")
    if role == "tool" or role == "function":  # a tool's answer (function: the deprecated form)
        response = content if isinstance(content, str) else _chat_parts(content)
        parts = [C.tool_call_response(get(message, "tool_call_id"), response)]
    else:
        parts = _chat_parts(content)
    refusal = string(get(message, "refusal"))
    if refusal:
        parts.append(C.text(refusal))
    transcript = string(get(get(message, "audio"), "transcript"))  # an audio answer: what it says
    if transcript:
        parts.append(C.text(transcript))
    for call in C.sequence(get(message, "tool_calls")) or ():
        parts.append(_chat_tool_call(call))
    function_call = get(message, "function_call")  # deprecated single call
    if function_call is not None:
        parts.append(C.tool_call(None, get(function_call, "name"), get(function_call, "arguments")))
    return C.message(role, parts, get(message, "name"))


def _prompts(prompt: Any) -> list[C.Message]:
    """A legacy completion's or an embedding's input: a string, a list of strings, or token ids."""
    if isinstance(prompt, str):
        return [C.message("user", [C.text(prompt)])]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return [C.message("user", [C.text(p)]) for p in prompt]
    return [C.message("user", [C.generic(prompt)])] if prompt is not None else []


def chat_input(kwargs: Mapping[str, Any]) -> dict[str, str]:
    messages = kwargs.get("messages")
    if messages is None:  # legacy completions
        return C.input_attributes(_prompts(kwargs.get("prompt")))
    read = C.sequence(messages)
    converted = [chat_message(m) for m in read] if read is not None else None
    return C.input_attributes(converted, tools=C.sequence(kwargs.get("tools") or kwargs.get("functions")))


def embeddings_input(kwargs: Mapping[str, Any]) -> dict[str, str]:
    return C.input_attributes(_prompts(kwargs.get("input")))


def choices_output(choices: Any) -> list[C.Message]:
    """A whole response's choices: a chat message each, or a legacy completion's text."""
    out = []
    for choice in choices:
        message = get(choice, "message")
        if message is not None:
            parts = chat_message(message)["parts"]
        else:
            text = string(get(choice, "text"))
            parts = [C.text(text)] if text else []
        out.append(C.output(parts, string(get(choice, "finish_reason"))))
    return out


# --- Responses API -------------------------------------------------------------------------------

_TOOL_OUTPUTS = ("function_call_output", "custom_tool_call_output")  # input items: a tool's answer


def _response_part(part: Any) -> C.Part:
    kind = get(part, "type")
    if kind in ("input_text", "output_text") and (text := string(get(part, "text"))) is not None:
        return C.text(text)
    if kind == "refusal" and (refusal := string(get(part, "refusal"))) is not None:
        return C.text(refusal)
    if kind == "input_image":
        if (url := string(get(part, "image_url"))) is not None:
            return C.media("image", url)
        if (file_id := string(get(part, "file_id"))) is not None:
            return C.file("image", file_id)
    if kind == "input_file":
        if (file_id := string(get(part, "file_id"))) is not None:
            return C.file("document", file_id)
        if (data := string(get(part, "file_data"))) is not None:
            return C.inline("document", data)
        if (url := string(get(part, "file_url"))) is not None:
            return C.media("document", url)
    return C.generic(part)


def _reasoning_text(item: Any) -> str:
    """A reasoning item's summary or, where it has none (open-weight models), its reasoning text."""
    for field in ("summary", "content"):
        text = "".join(t for s in C.sequence(get(item, field)) or () if (t := string(get(s, "text"))))
        if text:
            return text
    return ""


def _item_parts(item: Any) -> list[C.Part]:
    """The parts of one input or output item that is not a role message."""
    kind = get(item, "type")
    if kind == "function_call":
        return [C.tool_call(get(item, "call_id"), get(item, "name"), get(item, "arguments"))]
    if kind == "custom_tool_call":
        return [C.tool_call(get(item, "call_id"), get(item, "name"), get(item, "input"))]
    if kind in _TOOL_OUTPUTS:
        return [C.tool_call_response(get(item, "call_id"), get(item, "output"))]
    if kind == "reasoning":
        text = _reasoning_text(item)
        return [C.reasoning(text)] if text else []  # encrypted reasoning has no summary to show
    return [C.generic(item)]


def _message_parts(content: Any) -> list[C.Part]:
    if isinstance(content, str):
        return [C.text(content)]
    return [_response_part(part) for part in C.sequence(content) or ()]


def _input_item(item: Any) -> C.Message:
    role = get(item, "role")
    if role is not None:
        return C.message(role, _message_parts(get(item, "content")))
    kind = get(item, "type")
    role = "tool" if kind in _TOOL_OUTPUTS else "assistant"
    return C.message(role, _item_parts(item))


def responses_input(kwargs: Mapping[str, Any]) -> dict[str, str]:
    value = kwargs.get("input")
    messages: list[C.Message] | None
    if isinstance(value, str):
        messages = [C.message("user", [C.text(value)])]
    else:
        items = C.sequence(value)
        messages = [_input_item(item) for item in items] if items is not None else None
    instructions = string(kwargs.get("instructions"))
    return C.input_attributes(messages, [C.text(instructions)] if instructions else None, C.sequence(kwargs.get("tools")))


def response_output(output: Any, finish_reason: str | None) -> list[C.Message]:
    """A Responses answer is one message: its output items in order."""
    parts: list[C.Part] = []
    for item in output or ():
        if get(item, "type") == "message":
            parts.extend(_message_parts(get(item, "content")))
        else:
            parts.extend(_item_parts(item))
    return [C.output(parts, finish_reason)]
