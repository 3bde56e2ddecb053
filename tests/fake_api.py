"""Hand-made OpenAI/Anthropic HTTP answers for scenario tests (served through MockTransport)."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Iterator


class MidStreamError(Exception):
    """Raised by the transport halfway through a streamed body."""


def sse(events: list[tuple[str | None, Any]], ascii: bool = True) -> bytes:
    """``ascii=False``: non-ASCII characters as they are, not escaped (as the APIs may send them)."""
    out = []
    for name, data in events:
        if name:
            out.append(f"event: {name}\n")
        out.append(f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=ascii)}\n\n")
    return "".join(out).encode()


SSE_HEADERS = {"content-type": "text/event-stream"}


class FakeAPI:
    """Answers chat completions / responses / messages like the real APIs, with knobs for faults."""

    def __init__(
        self,
        http: Any,
        *,
        model: str | None = None,
        usage: bool = True,
        chunks: int = 5,
        rate_limited: int = 0,
        malformed: bool = False,
        fail_mid_stream: bool = False,
        is_async: bool = False,
        status: int = 200,
        served_tier: str | None = None,
    ) -> None:
        self.http = http
        self.model = model
        self.usage = usage
        self.chunks = chunks
        self.rate_limited = rate_limited
        self.malformed = malformed
        self.fail_mid_stream = fail_mid_stream
        self.is_async = is_async
        self.status = status
        self.served_tier = served_tier  # the service tier OpenAI answers with, whatever the request asked
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content or b"{}")
        self.requests.append(body)
        if self.rate_limited:
            self.rate_limited -= 1
            return self.http.Response(
                429,
                headers={"retry-after-ms": "1", "content-type": "application/json"},
                json={"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}},
            )
        if self.status >= 400:
            return self.http.Response(self.status, json={"error": {"message": "boom", "type": "server_error"}})
        if self.malformed:
            return self.http.Response(200, headers={"content-type": "application/json"}, content=b"{not json")
        path = request.url.path
        model = self.model or body.get("model", "gpt-4o-mini")
        self.tier = {"service_tier": self.served_tier} if self.served_tier else self._tier(body)
        if path.endswith("/messages"):
            return self._anthropic(body, model)
        if path.endswith("/responses"):
            return self._responses(body, model)
        return self._chat(body, model)

    # --- bodies ----------------------------------------------------------------------------------

    @staticmethod
    def _tier(body: dict[str, Any]) -> dict[str, str]:
        """OpenAI names the tier that served a call that asked for one (``auto``: the default tier)."""
        asked = body.get("service_tier")
        return {"service_tier": "default" if asked == "auto" else asked} if isinstance(asked, str) else {}

    def _stream(self, payload: bytes) -> Any:
        headers = SSE_HEADERS
        if not self.fail_mid_stream:
            return self.http.Response(200, headers=headers, content=payload)
        half = payload[: len(payload) // 2]
        cut = half[: half.rfind(b"\n\n") + 2]
        if self.is_async:

            async def agen() -> AsyncIterator[bytes]:
                yield cut
                raise MidStreamError("connection reset")

            return self.http.Response(200, headers=headers, content=agen())

        def gen() -> Iterator[bytes]:
            yield cut
            raise MidStreamError("connection reset")

        return self.http.Response(200, headers=headers, content=gen())

    def _chat(self, body: dict[str, Any], model: str) -> Any:
        usage = {
            "prompt_tokens": 120,
            "completion_tokens": 40,
            "total_tokens": 160,
            "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 10},
        }
        if not body.get("stream"):
            payload: dict[str, Any] = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there"}, "finish_reason": "stop"}],
                **self.tier,
            }
            if self.usage:
                payload["usage"] = usage
            return self.http.Response(200, json=payload)
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, **self.tier}
        events: list[tuple[str | None, Any]] = []
        for i in range(self.chunks):
            delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f"w{i} "}
            events.append((None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
        events.append((None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        if self.usage and (body.get("stream_options") or {}).get("include_usage"):
            events.append((None, {**base, "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        return self._stream(sse(events))

    @staticmethod
    def _hosted_tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
        """The hosted tools' output items: two web searches and a page opened between them; one file search."""
        kinds = {str(tool.get("type", "")) for tool in body.get("tools") or ()}
        items: list[dict[str, Any]] = []
        if kinds & {"web_search", "web_search_preview"}:
            for i, action in enumerate(({"type": "search", "query": "tracing"}, {"type": "open_page", "url": "https://example.com"},
                                        {"type": "search", "query": "opentelemetry"})):  # fmt: skip
                items.append({"type": "web_search_call", "id": f"ws_{i}", "status": "completed", "action": action})
        if "file_search" in kinds:
            items.append({"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["tracing"], "results": None})
        return items

    def _responses(self, body: dict[str, Any], model: str) -> Any:
        hosted = self._hosted_tool_calls(body)
        response = {
            "id": "resp_1",
            "object": "response",
            "created_at": 1,
            "model": model,
            "status": "completed",
            "output": [
                *hosted,
                {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "hello there", "annotations": []}]},
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            **self.tier,
        }
        if self.usage:
            response["usage"] = {
                "input_tokens": 200, "output_tokens": 50, "total_tokens": 250,
                "input_tokens_details": {"cached_tokens": 100}, "output_tokens_details": {"reasoning_tokens": 20},
            }
        if not body.get("stream"):
            return self.http.Response(200, json=response)
        created = {**response, "status": "in_progress", "output": []}
        created.pop("usage", None)
        events: list[tuple[str | None, Any]] = [
            ("response.created", {"type": "response.created", "sequence_number": 0, "response": created}),
        ]
        for index, item in enumerate(hosted):
            for kind, shown in (("response.output_item.added", {**item, "status": "in_progress"}), ("response.output_item.done", item)):
                events.append((kind, {"type": kind, "sequence_number": 1, "output_index": index, "item": shown}))
        events += [
            ("response.output_item.added", {"type": "response.output_item.added", "sequence_number": 1, "output_index": len(hosted),
                                            "item": {"type": "message", "id": "msg_1", "role": "assistant",
                                                     "status": "in_progress", "content": []}}),
            ("response.content_part.added", {"type": "response.content_part.added", "sequence_number": 1, "item_id": "msg_1",
                                             "output_index": len(hosted), "content_index": 0,
                                             "part": {"type": "output_text", "text": "", "annotations": []}}),
            ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1",
                                            "output_index": len(hosted), "content_index": 0, "delta": "hello there", "logprobs": []}),
            ("response.completed", {"type": "response.completed", "sequence_number": 2, "response": response}),
        ]
        return self._stream(sse(events))

    def _anthropic(self, body: dict[str, Any], model: str) -> Any:
        usage = {"input_tokens": 30, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200, "output_tokens": 25,
                 "cache_creation": {"ephemeral_5m_input_tokens": 150, "ephemeral_1h_input_tokens": 50}}
        if isinstance(body.get("speed"), str):  # fast mode: the usage says which speed served the call
            usage["speed"] = body["speed"]
        searches = {}
        if any(str(tool.get("type", "")).startswith("web_search") for tool in body.get("tools") or ()):
            searches = {"server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 0}}  # the model searched twice
            usage.update(searches)
        message = {
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "hello there"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": usage if self.usage else {"input_tokens": 0, "output_tokens": 0},
        }
        if not body.get("stream"):
            return self.http.Response(200, json=message)
        # As the API: message_start's usage counts no searches yet, message_delta's has the final count.
        start_usage = {**usage, "output_tokens": 1}
        if searches:
            start_usage["server_tool_use"] = {"web_search_requests": 0, "web_fetch_requests": 0}
        start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
        events: list[tuple[str | None, Any]] = [("message_start", {"type": "message_start", "message": start}),
                  ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
        for i in range(self.chunks):
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"w{i} "}}))
        events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                   ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                      "usage": {"output_tokens": 25, **searches}}),
                   ("message_stop", {"type": "message_stop"})]
        return self._stream(sse(events))
