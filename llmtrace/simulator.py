"""A simulated LLM provider on loopback that speaks the OpenAI and Anthropic HTTP APIs closely enough
for the real SDKs: JSON and SSE streams, usage with cached and reasoning tokens, heavy-tailed latency,
429s with ``retry-after`` and 5xx. ``llmtrace demo`` drives it; use it in your own tests too:

    with SimulatedProvider(seed=1) as sim:
        client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sim")
        client.chat.completions.create(model="gpt-4o-mini", messages=[...])

Latency is log-normal around a per-model median with sigma 0.9, so P99/P50 is about 8 (LLM APIs show
1:8 to 1:15). Prompt caching follows the providers' rules of thumb: OpenAI caches prompts of 1,024
tokens or more in 128-token steps once a prefix was seen; Anthropic caches up to the last
``cache_control`` block, writing it the first time and reading it after. Token counts are estimated
as four characters a token; the numbers are realistic in shape, not exact tokenizer counts.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

# Median total latency (ms) per model family; anything else gets _DEFAULT_MEDIAN_MS.
_MEDIAN_MS = {
    "gpt-4o-mini": 450,
    "gpt-4.1-nano": 300,
    "gpt-4.1-mini": 550,
    "gpt-4o": 900,
    "o4-mini": 2200,
    "gpt-5": 2600,
    "claude-haiku": 600,
    "claude-sonnet": 1400,
    "claude-opus": 2500,
    "text-embedding": 80,
}
_DEFAULT_MEDIAN_MS = 700
_SIGMA = 0.9  # log-normal: P99/P50 = exp(2.326 * sigma) ~ 8
_DATED = {  # what the APIs answer for an undated alias
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "o4-mini": "o4-mini-2025-04-16",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
}
_WORDS = (
    "the model reads your request and answers with a short helpful reply about invoices orders "
    "search results summaries tickets refunds customers and the weather in a calm tone"
).split()


# A client's seed for one call (demo traffic sends it): the answer depends on it, not on arrival order.
SEED_HEADER = "x-simulator-seed"
_RETRY_HEADER = "x-stainless-retry-count"  # which retry of a call this is: each attempt rolls its own faults


@dataclass
class Faults:
    """Per-attempt odds of an error answer (the SDKs retry 429 and 5xx on their own)."""

    rate_limit: float = 0.04  # 429 with retry-after
    server_error: float = 0.01  # 500 / 503 (OpenAI) or 529 overloaded (Anthropic)
    bad_request: float = 0.003  # 400 context too long: not retried, an error span
    retry_after_s: float = 1.0


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _text_of(content: Any) -> str:
    """Text of a message's content: a string, or a list of parts ({"text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _has_cache_control(block: Any) -> bool:
    return isinstance(block, list) and any(isinstance(p, dict) and "cache_control" in p for p in block)


class _Model:
    """What one request asks of one model: its latency, output size and caching."""

    def __init__(self, name: str, rng: random.Random, latency_scale: float) -> None:
        self.name = name
        self.dated = _DATED.get(name, name)
        median = next((ms for prefix, ms in _MEDIAN_MS.items() if name.startswith(prefix)), _DEFAULT_MEDIAN_MS)
        self.latency_s = median / 1000 * math.exp(rng.gauss(0, _SIGMA)) * latency_scale
        self.reasons = name.startswith(("o1", "o3", "o4", "gpt-5"))
        self.rng = rng

    def output_tokens(self, max_tokens: Any) -> int:
        wanted = int(math.exp(self.rng.gauss(math.log(180), 0.7)))
        return max(1, min(wanted, max_tokens)) if isinstance(max_tokens, int) and max_tokens > 0 else max(1, wanted)

    def text(self, tokens: int) -> str:
        # About 1.3 tokens a word.
        return " ".join(self.rng.choice(_WORDS) for _ in range(max(1, int(tokens / 1.3))))


class _PromptCache:
    """Prefixes seen recently (hashes only), shared by every request the simulator answers."""

    def __init__(self, size: int = 4096) -> None:
        self._seen: dict[str, None] = {}
        self._size = size
        self._lock = threading.Lock()

    def seen_before(self, prefix: str) -> bool:
        key = hashlib.sha256(prefix.encode()).hexdigest()
        with self._lock:
            hit = key in self._seen
            self._seen[key] = None
            if len(self._seen) > self._size:
                self._seen.pop(next(iter(self._seen)))
        return hit


class SimulatedProvider:
    """An OpenAI- and Anthropic-compatible HTTP server on 127.0.0.1 (a free port unless given)."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        latency_scale: float = 1.0,
        faults: Faults | None = None,
        port: int = 0,
    ) -> None:
        self.latency_scale = latency_scale
        self.faults = faults if faults is not None else Faults()
        self.requests = 0
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._cache = _PromptCache()
        self._server = _QuietServer(("127.0.0.1", port), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def start(self) -> SimulatedProvider:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="llmtrace-simulator", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SimulatedProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- one request ---------------------------------------------------------------------------

    def _random(self, call_seed: str | None, attempt: str | None) -> random.Random:
        # Each request gets its own generator: threads never share state. A client that names its call's seed
        # gets the same answer for the same call and attempt in whatever order concurrent requests arrive;
        # otherwise the seed comes from the shared generator, in arrival order.
        with self._rng_lock:
            self.requests += 1
            if call_seed is None:
                return random.Random(self._rng.getrandbits(64))
        return random.Random(f"{call_seed}/{attempt or 0}")

    def answer(
        self, path: str, body: dict[str, Any], call_seed: str | None = None, attempt: str | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, payload): a dict for JSON, or an iterator of (delay_s, SSE bytes). ``call_seed``:
        the client's seed for this call (the ``SEED_HEADER``); ``attempt``: which retry this is."""
        rng = self._random(call_seed, attempt)
        anthropic = path.rstrip("/").endswith("/messages")
        fault = self._fault(rng, anthropic)
        if fault is not None:
            return fault
        model = _Model(str(body.get("model") or "unknown"), rng, self.latency_scale)
        route = path.rstrip("/").rsplit("/v1", 1)[-1]
        if route == "/chat/completions":
            return self._chat(body, model)
        if route == "/responses":
            return self._responses(body, model)
        if route == "/embeddings":
            return self._embeddings(body, model)
        if route == "/messages":
            return self._messages(body, model)
        return 404, {}, _error(anthropic, "not_found_error", f"the simulator does not serve {path}")

    def _fault(self, rng: random.Random, anthropic: bool) -> tuple[int, dict[str, str], Any] | None:
        f = self.faults
        roll = rng.random()
        if roll < f.rate_limit:
            headers = {"retry-after": f"{f.retry_after_s:g}"}
            return 429, headers, _error(anthropic, "rate_limit_error", "Rate limit reached for requests per minute")
        roll -= f.rate_limit
        if roll < f.server_error:
            if anthropic:
                return 529, {}, _error(True, "overloaded_error", "Overloaded")
            return rng.choice((500, 503)), {}, _error(False, "server_error", "The server had an error")
        roll -= f.server_error
        if roll < f.bad_request:
            return 400, {}, _error(anthropic, "invalid_request_error", "This model's maximum context length was exceeded")
        return None

    # --- OpenAI --------------------------------------------------------------------------------

    def _openai_input(self, model: _Model, prefix: str, rest: str) -> tuple[int, int]:
        """(input tokens, cached tokens): OpenAI caches a model's prompt prefixes of 1,024+ tokens, in 128-token
        steps. The prefix is what stays the same from call to call (instructions, the messages before the last):
        every call after the first with it reads the same count, whatever order concurrent calls come in."""
        tokens = _tokens(prefix + rest)
        prefix_tokens = _tokens(prefix)
        if prefix_tokens < 1024 or not self._cache.seen_before(f"{model.name}:{prefix}"):
            return tokens, 0
        return tokens, prefix_tokens // 128 * 128

    def _chat(self, body: dict[str, Any], model: _Model) -> tuple[int, dict[str, str], Any]:
        texts = [_text_of(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)]
        input_tokens, cached = self._openai_input(model, "\n".join(texts[:-1]), "\n" + "\n".join(texts[-1:]))
        output = model.output_tokens(body.get("max_completion_tokens") or body.get("max_tokens"))
        reasoning = int(output * model.rng.uniform(0.3, 0.7)) if model.reasons else 0
        text = model.text(output - reasoning)
        usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output,
            "total_tokens": input_tokens + output,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
        }
        ident = {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "created": int(time.time()), "model": model.dated,
                 "system_fingerprint": "fp_sim"}
        if not body.get("stream"):
            time.sleep(model.latency_s)
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            return 200, {}, {**ident, "object": "chat.completion", "choices": [choice], "usage": usage}
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return 200, {}, self._chat_stream(ident, text, usage if want_usage else None, model)

    def _chat_stream(
        self, ident: dict[str, Any], text: str, usage: dict[str, Any] | None, model: _Model
    ) -> Iterator[tuple[float, bytes]]:
        base = {**ident, "object": "chat.completion.chunk"}

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return _sse(None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        pieces = _pieces(text)
        first, gap = _stream_timing(model, len(pieces))
        yield first, chunk({"role": "assistant", "content": ""})
        for piece in pieces:
            yield gap, chunk({"content": piece})
        yield 0.0, chunk({}, "stop")
        if usage is not None:
            yield 0.0, _sse(None, {**base, "choices": [], "usage": usage})
        yield 0.0, b"data: [DONE]\n\n"

    def _responses(self, body: dict[str, Any], model: _Model) -> tuple[int, dict[str, str], Any]:
        raw = body.get("input")
        prompt = raw if isinstance(raw, str) else "\n".join(
            _text_of(m.get("content")) for m in raw or [] if isinstance(m, dict)
        )
        input_tokens, cached = self._openai_input(model, _text_of(body.get("instructions")), prompt)
        output = model.output_tokens(body.get("max_output_tokens"))
        reasoning = int(output * model.rng.uniform(0.3, 0.7)) if model.reasons else 0
        text = model.text(output - reasoning)
        response = {
            "id": "resp_" + uuid.uuid4().hex[:24], "object": "response", "created_at": int(time.time()),
            "model": model.dated, "status": "completed", "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": [],
            "output": [{"type": "message", "id": "msg_" + uuid.uuid4().hex[:16], "role": "assistant",
                        "status": "completed", "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": input_tokens, "output_tokens": output, "total_tokens": input_tokens + output,
                      "input_tokens_details": {"cached_tokens": cached},
                      "output_tokens_details": {"reasoning_tokens": reasoning}},
        }
        if not body.get("stream"):
            time.sleep(model.latency_s)
            return 200, {}, response
        return 200, {}, self._responses_stream(response, text, model)

    def _responses_stream(self, response: dict[str, Any], text: str, model: _Model) -> Iterator[tuple[float, bytes]]:
        item = response["output"][0]
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        pieces = _pieces(text)
        first, gap = _stream_timing(model, len(pieces))
        events: list[tuple[float, str, dict[str, Any]]] = [
            (first, "response.created", {"response": started}),
            (0.0, "response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
            (0.0, "response.content_part.added", {**where, "part": {"type": "output_text", "text": "", "annotations": []}}),
        ]
        events += [(gap, "response.output_text.delta", {**where, "delta": piece, "logprobs": []}) for piece in pieces]
        events.append((0.0, "response.completed", {"response": response}))
        for number, (delay, name, data) in enumerate(events):
            yield delay, _sse(name, {"type": name, "sequence_number": number, **data})

    def _embeddings(self, body: dict[str, Any], model: _Model) -> tuple[int, dict[str, str], Any]:
        raw = body.get("input")
        inputs = raw if isinstance(raw, list) else [raw]
        tokens = sum(_tokens(str(x)) for x in inputs)
        time.sleep(model.latency_s)
        dims = int(body.get("dimensions") or 8)
        data = [{"object": "embedding", "index": i, "embedding": [model.rng.uniform(-1, 1) for _ in range(dims)]}
                for i in range(len(inputs))]
        return 200, {}, {"object": "list", "data": data, "model": model.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    # --- Anthropic -----------------------------------------------------------------------------

    def _messages(self, body: dict[str, Any], model: _Model) -> tuple[int, dict[str, str], Any]:
        system = body.get("system")
        messages = body.get("messages") or []
        cacheable = ""
        if _has_cache_control(system):
            cacheable = _text_of(system)
        rest = "\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        if not cacheable:
            rest = _text_of(system) + rest
        cache_read = cache_write = 0
        if cacheable:
            if self._cache.seen_before(f"anthropic:{model.name}:{cacheable}"):
                cache_read = _tokens(cacheable)
            else:
                cache_write = _tokens(cacheable)
        output = model.output_tokens(body.get("max_tokens"))
        text = model.text(output)
        usage = {
            "input_tokens": _tokens(rest), "output_tokens": output,
            "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write,
            "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard",
        }
        message = {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant", "model": model.dated,
                   "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": usage}
        if not body.get("stream"):
            time.sleep(model.latency_s)
            return 200, {}, message
        return 200, {}, self._messages_stream(message, text, model)

    def _messages_stream(self, message: dict[str, Any], text: str, model: _Model) -> Iterator[tuple[float, bytes]]:
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        pieces = _pieces(text)
        first, gap = _stream_timing(model, len(pieces))
        yield first, _sse("message_start", {"type": "message_start", "message": start})
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        yield 0.0, _sse("content_block_start", block)
        for piece in pieces:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            yield gap, _sse("content_block_delta", delta)
        yield 0.0, _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
               "usage": {"output_tokens": usage["output_tokens"]}}
        yield 0.0, _sse("message_delta", end)
        yield 0.0, _sse("message_stop", {"type": "message_stop"})


def _error(anthropic: bool, kind: str, message: str) -> dict[str, Any]:
    if anthropic:
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def _sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _pieces(text: str, words_per_chunk: int = 3) -> list[str]:
    words = text.split(" ")
    return [" ".join(words[i : i + words_per_chunk]) + " " for i in range(0, len(words), words_per_chunk)]


def _stream_timing(model: _Model, chunks: int) -> tuple[float, float]:
    """(time to first chunk, gap between chunks): the first chunk takes 15-35% of the total."""
    first = model.latency_s * model.rng.uniform(0.15, 0.35)
    return first, (model.latency_s - first) / max(chunks, 1)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (an SDK timing out, an app breaking out of a stream) is not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(sim: SimulatedProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                anthropic = self.path.rstrip("/").endswith("/messages")
                self._send(400, {}, _error(anthropic, "invalid_request_error", "the body is not a JSON object"))
                return
            self._send(*sim.answer(self.path, body, self.headers.get(SEED_HEADER), self.headers.get(_RETRY_HEADER)))

        def _send(self, status: int, headers: dict[str, str], payload: Any) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("x-request-id", "req_" + uuid.uuid4().hex[:16])
            if isinstance(payload, dict):
                data = json.dumps(payload).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for delay, event in payload:
                    if delay > 0:
                        time.sleep(delay)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client stopped reading (an early break): fine

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
