"""Content capture: prompts and answers as the conventions' messages, checked against what the SDKs assemble."""

from __future__ import annotations

import json
from typing import Any

import pytest

import llmtrace
from conftest import anthropic_client, http_module, openai_client, recorded_rows
from examples.recorded_traffic import recorded_call, recorded_client  # the example's replay serves the tests too
from fake_api import sse

ROWS = [r for r in recorded_rows() if r["status"] < 400 and r["path"] != "/v1/embeddings"]
RESPONSE_DONE = ("response.completed", "response.incomplete", "response.failed")

# Per output message: (its text, its tool calls as (name, arguments), its reasoning, its finish reason).
View = tuple[str, list[tuple[Any, Any]], str, Any]


def _decoded(arguments: Any) -> Any:
    try:
        return json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return arguments


def _captured_view(messages: list[dict[str, Any]]) -> list[View]:
    out = []
    for m in messages:
        assert m["role"] == "assistant" and "finish_reason" in m
        parts = m["parts"]
        assert all(isinstance(p["type"], str) for p in parts)
        text = "".join(p["content"] for p in parts if p["type"] == "text")
        tools = [(p["name"], p["arguments"]) for p in parts if p["type"] == "tool_call"]
        reasoning = "".join(p["content"] for p in parts if p["type"] == "reasoning")
        out.append((text, tools, reasoning, m["finish_reason"]))
    return out


def _chat_view(completion: Any) -> list[View]:
    out = []
    for choice in sorted(completion.choices, key=lambda c: c.index):
        m = choice.message
        calls = [c.function for c in m.tool_calls or ()] + ([m.function_call] if m.function_call else [])
        tools = [(f.name, _decoded(f.arguments)) for f in calls]
        out.append(((m.content or "") + (m.refusal or ""), tools, "", choice.finish_reason))
    return out


def _response_view(response: Any) -> list[View]:
    text, tools, reasoning = "", [], ""
    for item in response.output:
        if item.type == "message":
            text += "".join(getattr(p, "text", None) or getattr(p, "refusal", "") for p in item.content)
        elif item.type == "function_call":
            tools.append((item.name, _decoded(item.arguments)))
        elif item.type == "reasoning":
            reasoning += "".join(s.text for s in item.summary)
    finish = (response.incomplete_details.reason if response.incomplete_details else None) or response.status
    return [(text, tools, reasoning, finish)]


def _anthropic_view(message: Any) -> list[View]:
    blocks = message.content
    text = "".join(b.text for b in blocks if b.type == "text")
    tools = [(b.name, b.input) for b in blocks if b.type == "tool_use"]
    reasoning = "".join(b.thinking for b in blocks if b.type == "thinking")
    return [(text, tools, reasoning, message.stop_reason)]


def _replay(row: dict[str, Any]) -> list[View]:
    """Make the recorded call as an app would, and return the answer as the SDK itself assembled it."""
    client = recorded_client(row)
    method, kwargs = recorded_call(row, client)
    if row["provider"] == "anthropic":
        if not row["stream"]:
            return _anthropic_view(method(**kwargs))
        kwargs.pop("stream")
        with client.messages.stream(**kwargs) as stream:
            return _anthropic_view(stream.get_final_message())
    if not row["stream"]:
        result = method(**kwargs)
        if row["path"] == "/v1/responses":
            return _response_view(result)
        if row["path"] == "/v1/completions":
            return [(c.text, [], "", c.finish_reason) for c in sorted(result.choices, key=lambda c: c.index)]
        return _chat_view(result)
    events = list(method(**kwargs))
    if row["path"] == "/v1/responses":
        (final,) = [e.response for e in events if e.type in RESPONSE_DONE]
        return _response_view(final)
    if row["path"] == "/v1/completions":
        texts: dict[int, str] = {}
        finish: dict[int, Any] = {}
        for chunk in events:
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + c.text
                finish[c.index] = c.finish_reason or finish.get(c.index)
        return [(texts[i], [], "", finish[i]) for i in sorted(texts)]
    from openai.lib.streaming.chat import ChatCompletionStreamState

    state = ChatCompletionStreamState()
    for chunk in events:
        state.handle_chunk(chunk)
    return _chat_view(state.current_completion_snapshot)


def _input_texts(messages: list[dict[str, Any]]) -> list[str | None]:
    """Each input message's text when it is a single text part (what a string content becomes)."""
    return [m["parts"][0]["content"] if [p["type"] for p in m["parts"]] == ["text"] else None for m in messages]


def _request_texts(body: dict[str, Any]) -> list[str | None]:
    if "messages" in body:
        return [m["content"] if isinstance(m.get("content"), str) and m.get("role") not in ("tool", "function") else None for m in body["messages"]]
    value = body.get("input", body.get("prompt"))
    if isinstance(value, str):
        return [value]
    return [v if isinstance(v, str) else (v.get("content") if isinstance(v.get("content"), str) else None) for v in value]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['provider']}-{r['path'].rsplit('/', 1)[-1]}-{r['index']}-{'sse' if r['stream'] else 'json'}" for r in ROWS])
def test_captured_content_is_what_the_sdk_assembled(row: dict[str, Any]) -> None:
    with llmtrace.testing.capture(capture_content=True) as captured:
        expected = _replay(row)
    (span,) = captured.spans()
    a = span.attributes
    assert _captured_view(json.loads(a["gen_ai.output.messages"])) == expected

    body = json.loads(row["request_body"])
    messages = json.loads(a["gen_ai.input.messages"])
    assert all(isinstance(m["role"], str) and all(isinstance(p["type"], str) for p in m["parts"]) for m in messages)
    texts = _request_texts(body)
    assert len(messages) == len(texts)
    assert [t for t, s in zip(_input_texts(messages), texts) if s is not None] == [s for s in texts if s is not None]
    system = body.get("system", body.get("instructions"))
    if system:
        captured_system = json.loads(a["gen_ai.system_instructions"])
        expected_system = system if isinstance(system, str) else "".join(b["text"] for b in system)
        assert "".join(p["content"] for p in captured_system) == expected_system
    else:
        assert "gen_ai.system_instructions" not in a
    assert json.loads(a.get("gen_ai.tool.definitions", "null")) == body.get("tools", body.get("functions"))


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": choices, **extra}


def _delta(index: int, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}


def _call_delta(index: int, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name:
        function["name"] = name
    return {"index": index, **({"id": call_id, "type": "function"} if call_id else {}), "function": function}


THREE_CHOICES = [
    _chunk([_delta(0, role="assistant", content=""), _delta(1, role="assistant", content=""), _delta(2, role="assistant")]),
    _chunk([_delta(0, content="Sunny "), _delta(1, tool_calls=[_call_delta(0, "call_a", "weather", '{"ci')])]),
    _chunk([_delta(1, tool_calls=[_call_delta(1, "call_b", "time", '{"tz": "CET"}')]), _delta(2, refusal="I can't ")]),
    _chunk([_delta(0, content="in Paris."), _delta(1, tool_calls=[_call_delta(0, arguments='ty": "Paris"}')])]),
    _chunk([_delta(2, refusal="say.")]),
    _chunk([_delta(0, "stop"), _delta(1, "tool_calls"), _delta(2, "stop")]),
]


def test_a_stream_of_three_choices_with_interleaved_tool_calls_and_a_refusal_keeps_each_apart() -> None:
    http = http_module(pytest.importorskip("openai"))
    body = sse([(None, c) for c in THREE_CHOICES] + [(None, "[DONE]")])
    client = openai_client(lambda request: http.Response(200, headers={"content-type": "text/event-stream"}, content=body))
    with llmtrace.testing.capture(capture_content=True) as captured:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], n=3, stream=True, stream_options={"include_usage": False})
        for _ in stream:
            pass
    (span,) = captured.spans()
    a = span.attributes
    assert json.loads(a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Sunny in Paris."}], "finish_reason": "stop"},
        {
            "role": "assistant",
            "parts": [
                {"type": "tool_call", "id": "call_a", "name": "weather", "arguments": {"city": "Paris"}},
                {"type": "tool_call", "id": "call_b", "name": "time", "arguments": {"tz": "CET"}},
            ],
            "finish_reason": "tool_calls",
        },
        {"role": "assistant", "parts": [{"type": "text", "content": "I can't say."}], "finish_reason": "stop"},
    ]
    # No usage came: the estimate counts every choice's output, tool arguments and refusal included.
    assert a["llmtrace.usage.source"] == "estimated"
    assert a["gen_ai.usage.output_tokens"] >= 15


def _completion(message: dict[str, Any], usage: bool) -> dict[str, Any]:
    answer = {
        "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "tool_calls"}],
    }  # fmt: skip
    if usage:
        answer["usage"] = {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}
    return answer


CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"query": "the weather in Paris and in Lyon"}'}}


def test_a_whole_answer_without_usage_counts_its_tool_arguments() -> None:
    http = http_module(pytest.importorskip("openai"))
    client = openai_client(lambda request: http.Response(200, json=_completion({"content": None, "tool_calls": [CALL]}, usage=False)))
    with llmtrace.testing.capture() as captured:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    a = captured.spans()[0].attributes
    assert a["llmtrace.usage.source"] == "estimated"
    assert a["gen_ai.usage.output_tokens"] >= 10  # the arguments' JSON, not 0 for an answer with no text


def test_chat_history_with_tools_images_and_refusals_becomes_typed_parts() -> None:
    http = http_module(pytest.importorskip("openai"))
    client = openai_client(lambda request: http.Response(200, json=_completion({"content": None, "tool_calls": [CALL]}, usage=True)))
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is here?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "assistant", "content": None, "refusal": "I cannot help with that."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], "name": "ana"},
    ]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with llmtrace.testing.capture(capture_content=True) as captured:
        client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=tools)  # type: ignore[arg-type]
    a = captured.spans()[0].attributes
    assert json.loads(a["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [
            {"type": "text", "content": "What is here?"},
            {"type": "blob", "modality": "image", "mime_type": "image/png", "content": "iVBORw0KGgo="},
        ]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "lookup", "arguments": {"query": "the weather in Paris and in Lyon"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "18 C"}]},
        {"role": "assistant", "parts": [{"type": "text", "content": "I cannot help with that."}]},
        {"role": "user", "parts": [{"type": "uri", "modality": "image", "uri": "https://example.com/cat.png"}], "name": "ana"},
    ]  # fmt: skip
    assert json.loads(a["gen_ai.tool.definitions"]) == tools
    # The answer was tool calls only: they are the output, not an empty message.
    assert json.loads(a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "lookup", "arguments": {"query": "the weather in Paris and in Lyon"}}], "finish_reason": "tool_calls"}
    ]


def test_an_answer_passed_back_as_history_reads_like_a_dict() -> None:
    http = http_module(pytest.importorskip("openai"))
    client = openai_client(lambda request: http.Response(200, json=_completion({"content": None, "tool_calls": [CALL]}, usage=True)))
    with llmtrace.testing.capture(capture_content=True) as captured:
        first = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}, first.choices[0].message])
    second = json.loads(captured.spans()[1].attributes["gen_ai.input.messages"])
    assert second[1] == {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "lookup", "arguments": {"query": "the weather in Paris and in Lyon"}}]}


def test_responses_input_items_and_instructions() -> None:
    http = http_module(pytest.importorskip("openai"))
    answer = {
        "id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-4o-mini", "status": "completed",
        "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "18 C in Paris.", "annotations": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    }  # fmt: skip
    client = openai_client(lambda request: http.Response(200, json=answer))
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}, {"type": "input_image", "image_url": "https://example.com/sky.png", "detail": "auto"}]},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
    ]
    with llmtrace.testing.capture(capture_content=True) as captured:
        client.responses.create(model="gpt-4o-mini", instructions="Be brief.", input=items)  # type: ignore[arg-type]
    a = captured.spans()[0].attributes
    assert json.loads(a["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be brief."}]
    assert json.loads(a["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather?"}, {"type": "uri", "modality": "image", "uri": "https://example.com/sky.png"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "lookup", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "18 C"}]},
    ]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "18 C in Paris."}], "finish_reason": "completed"}
    ]


def test_anthropic_history_with_tool_results_images_and_a_system_list() -> None:
    anthropic = pytest.importorskip("anthropic")
    http = http_module(anthropic)
    answer = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "stop_reason": "end_turn",
        "content": [{"type": "thinking", "thinking": "Warm.", "signature": "s"}, {"type": "text", "text": "18 C."}],
        "usage": {"input_tokens": 30, "output_tokens": 9},
    }  # fmt: skip
    client = anthropic_client(lambda request: http.Response(200, json=answer))
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": [{"type": "text", "text": "18 C"}]}]},
    ]
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    with llmtrace.testing.capture(capture_content=True) as captured:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=100, system=system, messages=messages)  # type: ignore[arg-type]
    a = captured.spans()[0].attributes
    assert json.loads(a["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be brief."}]
    assert json.loads(a["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather?"}, {"type": "blob", "modality": "image", "mime_type": "image/jpeg", "content": "/9j/4AAQ"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "tu_1", "name": "lookup", "arguments": {"city": "Paris"}}]},
        {"role": "user", "parts": [{"type": "tool_call_response", "id": "tu_1", "response": [{"type": "text", "content": "18 C"}]}]},
    ]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "reasoning", "content": "Warm."}, {"type": "text", "content": "18 C."}], "finish_reason": "end_turn"}
    ]


def test_one_shot_iterables_in_a_request_reach_the_provider_whole() -> None:
    """Capture reads only lists and tuples: a generator read before the SDK sends it would send nothing."""
    openai = pytest.importorskip("openai")
    anthropic = pytest.importorskip("anthropic")
    seen: list[dict[str, Any]] = []
    oa_http, an_http = http_module(openai), http_module(anthropic)
    anthropic_answer = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "ok"}], "usage": {"input_tokens": 3, "output_tokens": 1},
    }  # fmt: skip

    def openai_answer(request: Any) -> Any:
        seen.append(json.loads(request.content))
        return oa_http.Response(200, json=_completion({"content": "ok"}, usage=True))

    def anthropic_handler(request: Any) -> Any:
        seen.append(json.loads(request.content))
        return an_http.Response(200, json=anthropic_answer)

    with llmtrace.testing.capture(capture_content=True) as captured:
        openai_client(openai_answer).chat.completions.create(model="gpt-4o-mini", messages=(m for m in [{"role": "user", "content": "hi"}]))
        anthropic_client(anthropic_handler).messages.create(
            model="claude-sonnet-4-6", max_tokens=10,
            messages=[{"role": "user", "content": (b for b in [{"type": "text", "text": "hello"}])}],  # type: ignore[misc]
        )  # fmt: skip
    assert seen[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert seen[1]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    first, second = (s.attributes for s in captured.spans())
    assert "gen_ai.input.messages" not in first  # not readable without taking it from the SDK
    assert json.loads(second["gen_ai.input.messages"]) == [{"role": "user", "parts": []}]
    assert json.loads(first["gen_ai.output.messages"])[0]["parts"] == [{"type": "text", "content": "ok"}]


def _stream_client(chunks: list[dict[str, Any]]) -> Any:
    http = http_module(pytest.importorskip("openai"))
    body = sse([(None, c) for c in chunks] + [(None, "[DONE]")])
    return openai_client(lambda request: http.Response(200, headers={"content-type": "text/event-stream"}, content=body))


def _function(name: str | None = None, arguments: str = "") -> dict[str, Any]:
    return {"name": name, "arguments": arguments} if name else {"arguments": arguments}


STREAM_SHAPES = {
    "text beside tool calls": (
        [
            _chunk([_delta(0, role="assistant", content="Let me check.", tool_calls=[_call_delta(0, "call_1", "weather", '{"city": ')])]),
            _chunk([_delta(0, tool_calls=[_call_delta(0, arguments='"Paris"}')])]),
            _chunk([_delta(0, "tool_calls")]),
        ],
        [{"type": "text", "content": "Let me check."}, {"type": "tool_call", "id": "call_1", "name": "weather", "arguments": {"city": "Paris"}}],
    ),
    "the deprecated function call": (
        [
            _chunk([_delta(0, role="assistant", content=None, function_call=_function("weather", '{"city"'))]),
            _chunk([_delta(0, function_call=_function(arguments=': "Paris"}'))]),
            _chunk([_delta(0, "function_call")]),
        ],
        [{"type": "tool_call", "id": None, "name": "weather", "arguments": {"city": "Paris"}}],
    ),
    # Gemini's OpenAI-compatible API leaves the calls' index out and sends each call whole.
    "tool calls without an index": (
        [
            _chunk([_delta(0, role="assistant", tool_calls=[
                {"id": "a", "type": "function", "function": _function("weather", '{"city": "Paris"}')},
                {"id": "b", "type": "function", "function": _function("time", '{"tz": "CET"}')},
            ])]),
            _chunk([_delta(0, "tool_calls")]),
        ],
        [{"type": "tool_call", "id": "a", "name": "weather", "arguments": {"city": "Paris"}}, {"type": "tool_call", "id": "b", "name": "time", "arguments": {"tz": "CET"}}],
    ),
}  # fmt: skip


@pytest.mark.parametrize("shape", STREAM_SHAPES)
def test_stream_shapes_are_assembled_into_parts(shape: str) -> None:
    chunks, expected = STREAM_SHAPES[shape]
    with llmtrace.testing.capture(capture_content=True) as captured:
        for _ in _stream_client(chunks).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
    a = captured.spans()[0].attributes
    (message,) = json.loads(a["gen_ai.output.messages"])
    assert message["parts"] == expected
    assert a["gen_ai.usage.output_tokens"] >= 6  # no usage came: the estimate counts the calls' arguments


def test_messages_in_a_dict_subclass_read_like_dicts() -> None:
    from collections import OrderedDict

    http = http_module(pytest.importorskip("openai"))
    client = openai_client(lambda request: http.Response(200, json=_completion({"content": "ok"}, usage=True)))
    with llmtrace.testing.capture(capture_content=True) as captured:
        client.chat.completions.create(model="gpt-4o-mini", messages=[OrderedDict(role="system", content="Be brief."), OrderedDict(role="user", content="hi")])  # type: ignore[list-item]
    assert json.loads(captured.spans()[0].attributes["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]},
    ]


def test_tool_arguments_nested_past_the_json_parser_stay_text() -> None:
    http = http_module(pytest.importorskip("openai"))
    deep = "[" * 5000 + "]" * 5000  # json.loads raises RecursionError, not ValueError
    call = {"id": "call_1", "type": "function", "function": {"name": "run", "arguments": deep}}
    client = openai_client(lambda request: http.Response(200, json=_completion({"content": None, "tool_calls": [call]}, usage=True)))
    with llmtrace.testing.capture(capture_content=True) as captured:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]}])
    (span,) = captured.spans()
    assert json.loads(span.attributes["gen_ai.input.messages"])[1]["parts"][0]["arguments"] == deep
    assert json.loads(span.attributes["gen_ai.output.messages"])[0]["parts"][0]["arguments"] == deep


def test_a_responses_reasoning_item_without_a_summary_is_its_reasoning_text() -> None:
    http = http_module(pytest.importorskip("openai"))
    answer = {
        "id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-oss-120b", "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "The user greets me."}]},
            {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]},
        ],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    }  # fmt: skip
    client = openai_client(lambda request: http.Response(200, json=answer), base_url="http://localhost:8000/v1")
    with llmtrace.testing.capture(capture_content=True) as captured:
        client.responses.create(model="gpt-oss-120b", input="hi")
    a = captured.spans()[0].attributes
    assert json.loads(a["gen_ai.output.messages"])[0]["parts"] == [{"type": "reasoning", "content": "The user greets me."}, {"type": "text", "content": "Hello!"}]
    assert a["gen_ai.usage.output_tokens"] >= 6  # no usage: the estimate counts the reasoning too


def test_inline_files_and_long_content_are_bounded_so_the_span_can_still_be_exported() -> None:
    """A 16 MB PDF sent inline made a 22 MB span, past a collector's limit: its export failed, and every span sent with
    it was lost. Inline media past 16 kB is recorded by its size; past 256 kB an attribute's long strings are cut."""
    from llmtrace import content

    http = http_module(pytest.importorskip("openai"))
    client = openai_client(lambda request: http.Response(200, json=_completion({"content": "ok"}, usage=True)))
    pdf = "JVBERi0xLjQK" * 100_000  # 1.2 MB of base64
    document = "A long pasted report. " * 20_000  # 440 kB of text
    with llmtrace.testing.capture(capture_content=True) as captured:
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": [{"type": "file", "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "r.pdf"}}]},
            {"role": "user", "content": document},
        ])  # fmt: skip
    recorded = captured.spans()[0].attributes["gen_ai.input.messages"]
    assert len(recorded) < content.MAX_CONTENT_CHARS
    file_part, text_part = (message["parts"][0] for message in json.loads(recorded))
    assert file_part == {"type": "blob", "modality": "document", "mime_type": "application/pdf", "content": "",
                         "content_omitted": len(pdf)}  # fmt: skip
    assert text_part["content"].startswith(document[:1024]) and text_part["content"].endswith(
        f"…[{len(document) - 1024:,} characters not captured]")


@pytest.mark.parametrize("arguments, recorded", [
    ('{"city": "Paris"}', {"city": "Paris"}),  # an object: decoded
    ("1.10", "1.10"),  # a custom tool's free-form input: text as written, not the number 1.1
    ("null", "null"),
    ('{"x": 1e400}', '{"x": 1e400}'),  # no JSON number holds it: Infinity would make the attribute invalid JSON
    ('{"emoji": "\\ud83d"}', {"emoji": "?"}),  # a lone surrogate: no exporter or store can encode it
])  # fmt: skip
def test_tool_arguments_are_decoded_only_into_what_json_carries(arguments: str, recorded: Any) -> None:
    http = http_module(pytest.importorskip("openai"))
    call = {"id": "call_1", "type": "function", "function": {"name": "run", "arguments": arguments}}
    client = openai_client(lambda request: http.Response(200, json=_completion({"content": None, "tool_calls": [call]}, usage=True)))
    with llmtrace.testing.capture(capture_content=True) as captured:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    output = captured.spans()[0].attributes["gen_ai.output.messages"]
    output.encode("utf-8")  # valid UTF-8
    assert json.loads(output)[0]["parts"][0]["arguments"] == recorded


def test_a_streamed_spoken_answer_is_captured_by_its_transcript_as_a_whole_one_is() -> None:
    http = http_module(pytest.importorskip("openai"))

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-audio-preview", "choices": choices, **extra}

    chunks = [
        chunk([{"index": 0, "delta": {"role": "assistant", "audio": {"id": "audio_1", "transcript": "Hello "}}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"audio": {"transcript": "world", "data": "UklGRg=="}}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        chunk([], usage={"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25,
                         "completion_tokens_details": {"audio_tokens": 18, "text_tokens": 2}}),
    ]  # fmt: skip
    client = openai_client(lambda request: http.Response(200, headers={"content-type": "text/event-stream"},
                                                         content=sse([(None, c) for c in chunks] + [(None, "[DONE]")])))  # fmt: skip
    with llmtrace.testing.capture(capture_content=True) as captured:
        for _ in client.chat.completions.create(model="gpt-4o-audio-preview", modalities=["text", "audio"], stream=True,
                                                audio={"voice": "alloy", "format": "pcm16"}, messages=[{"role": "user", "content": "hi"}]):  # fmt: skip
            pass
    assert json.loads(captured.spans()[0].attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Hello world"}], "finish_reason": "stop"}
    ]
