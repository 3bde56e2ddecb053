"""``llmtrace demo``: real openai and anthropic SDK calls against the simulated provider on loopback,
under ``llmtrace.instrument()``, for several tenants, features and models, streamed and not.

Nothing leaves the machine. Spans go to the store (and over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT``
is set), exactly as they would from an app.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from opentelemetry import trace

from .context import tags
from .instrumentation import instrument
from .simulator import SEED_HEADER, SimulatedProvider

SERVICE_NAME = "llmtrace-demo"
_LOREM = (
    "Customers write in about orders, refunds, invoices and delivery windows. Answer from the policy, "
    "quote the relevant clause, never promise what the policy does not allow, and escalate disputes. "
)


@dataclass(frozen=True)
class Feature:
    """One product feature of the simulated app: which API and models it calls, and how."""

    name: str
    weight: float
    api: str  # "chat" | "responses" | "embeddings" | "messages"
    models: tuple[str, ...]
    stream_share: float = 0.0
    system_tokens: int = 0  # prompts over ~1,024 tokens get cached by the provider
    max_tokens: int = 400
    self_hosted: bool = False  # an OpenAI-compatible server of the app's own (the simulator, by another host name)


FEATURES = (
    Feature("support-chat", 0.30, "messages", ("claude-sonnet-4-6", "claude-haiku-4-5"), 0.8, 2400, 600),
    Feature("search", 0.25, "chat", ("gpt-4o-mini",), 0.0, 300, 200),
    Feature("summarize", 0.15, "chat", ("gpt-4o", "gpt-4.1-mini"), 0.5, 1600, 400),
    Feature("agent", 0.08, "responses", ("o4-mini",), 0.3, 1300, 1500),
    Feature("embed", 0.15, "embeddings", ("text-embedding-3-small",)),
    Feature("research", 0.05, "messages", ("claude-opus-4-1",), 1.0, 4000, 1200),
    # A self-hosted model nobody has a price for, on a host of its own (its provider): the dashboard flags its calls as
    # unpriced.
    Feature("triage", 0.02, "chat", ("llama-3.1-8b-instruct",), 0.0, 200, 50, self_hosted=True),
)
TENANTS = (("acme", 0.45), ("globex", 0.25), ("initech", 0.15), ("umbrella", 0.10), ("hooli", 0.05))


@dataclass
class DemoRun:
    calls: int = 0
    errors: int = 0
    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ok: bool) -> None:
        with self.lock:
            self.calls += 1
            self.errors += 0 if ok else 1


class Traffic:
    """Makes one realistic call at a time through the real SDKs, tagged with tenant, feature and user."""

    def __init__(self, sim: SimulatedProvider, seed: int | None = None) -> None:
        import anthropic
        import openai

        self._sdk_errors = (openai.APIError, anthropic.APIError)
        self._openai = openai.OpenAI(base_url=sim.openai_base_url, api_key="demo", max_retries=2)
        # The same simulator by the name "localhost", which provider_hosts leaves out: the provider of its calls.
        self._self_hosted = openai.OpenAI(base_url=sim.openai_base_url.replace("127.0.0.1", "localhost"), api_key="demo",
                                          max_retries=2)  # fmt: skip
        self._anthropic = anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key="demo", max_retries=2)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def call(self) -> bool:
        """One call; True when it succeeded (the SDK's own retries included)."""
        with self._lock:
            seed = self._rng.getrandbits(64)
        rng = random.Random(seed)
        feature = rng.choices(FEATURES, weights=[f.weight for f in FEATURES])[0]
        tenant = rng.choices([t for t, _ in TENANTS], weights=[w for _, w in TENANTS])[0]
        user = f"{tenant}-user-{int(rng.paretovariate(1.2)) % 40}"
        with tags(tenant=tenant, feature=feature.name, user=user):
            try:
                # The simulator answers by the call's seed: the same calls however the threads interleave.
                self._send(feature, tenant, rng, {SEED_HEADER: str(seed)})
            except self._sdk_errors:
                return False
        return True

    def _send(self, feature: Feature, tenant: str, rng: random.Random, headers: dict[str, str]) -> None:
        model = rng.choice(feature.models)
        stream = rng.random() < feature.stream_share
        # The system prompt is the same for a tenant and feature, so providers can cache it.
        system = f"You are {tenant}'s {feature.name} assistant. " + _LOREM * (feature.system_tokens * 4 // len(_LOREM))
        question = " ".join(rng.choice(_LOREM.split()) for _ in range(int(rng.lognormvariate(3.5, 0.6))))
        if feature.api == "embeddings":
            self._openai.embeddings.create(model=model, input=[question] * rng.randint(1, 8), extra_headers=headers)
        elif feature.api == "messages":
            self._messages(model, system, question, feature.max_tokens, stream, headers)
        elif feature.api == "responses":
            response = self._openai.responses.create(
                model=model, instructions=system, input=question, max_output_tokens=feature.max_tokens, stream=stream,
                extra_headers=headers,
            )
            _drain(response, stream)
        else:
            messages: Any = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            client = self._self_hosted if feature.self_hosted else self._openai
            completion = client.chat.completions.create(
                model=model, messages=messages, max_tokens=feature.max_tokens, stream=stream, extra_headers=headers
            )
            _drain(completion, stream)

    def _messages(
        self, model: str, system: str, question: str, max_tokens: int, stream: bool, headers: dict[str, str]
    ) -> None:
        blocks: Any = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        messages: Any = [{"role": "user", "content": question}]
        request: Any = {"model": model, "system": blocks, "messages": messages, "max_tokens": max_tokens,
                        "extra_headers": headers}
        if stream:
            with self._anthropic.messages.stream(**request) as s:
                for _ in s.text_stream:
                    pass
        else:
            self._anthropic.messages.create(**request)


def _drain(result: Any, stream: bool) -> None:
    if stream:
        for _ in result:
            pass


# The demo reads no config file: run in an app's folder, that app's llmtrace.toml would send the simulated calls to
# its store (where they count towards its real budgets), refuse them by its budgets and post alerts to its webhook.
NO_CONFIG_FILE = os.devnull  # reads as an empty file


def instrument_for_demo(db: str | None) -> None:
    """instrument() as an app would, naming the simulator's host as OpenAI (priced, usage in streams)."""
    instrument(
        store=True,  # a store turned off in the shell (LLMTRACE_STORE=off) would leave the demo nothing to show
        db=db,
        config_file=NO_CONFIG_FILE,
        service_name=SERVICE_NAME,
        provider_hosts=["127.0.0.1=openai"],
        include_usage_hosts=["127.0.0.1"],
        flush_interval=1.0,
    )


def run_burst(
    traffic: Traffic, calls: int, concurrency: int, on_progress: Callable[[DemoRun], None] | None = None
) -> DemoRun:
    """``calls`` calls, ``concurrency`` at a time (threads: the SDKs are synchronous here)."""
    run = DemoRun()

    def one(_: int) -> None:
        run.record(traffic.call())
        if on_progress is not None:
            on_progress(run)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llmtrace-demo") as pool:
        list(pool.map(one, range(calls)))
    return run


def flush() -> None:
    """Every span so far written to the store (and exported)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush()


class ProgressBar:
    """``[#####.....] 120/400 calls, 3 failed`` on one line, redrawn at most ten times a second."""

    def __init__(self, total: int, out: TextIO = sys.stderr, width: int = 30) -> None:
        self.total, self.out, self.width = total, out, width
        self._tty = out.isatty()
        self._finished = False
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, run: DemoRun) -> None:
        now = time.monotonic()
        done = int(self.width * run.calls / max(self.total, 1))
        with self._lock:
            finished = run.calls >= self.total
            if self._finished:
                return
            self._finished = finished
            # A terminal redraws one line; a log file gets a line every tenth of the way.
            if self._tty and not finished and now - self._last < 0.1:
                return
            if not self._tty and not finished and (run.calls * 10 // max(self.total, 1)) == self._last:
                return
            self._last = now if self._tty else run.calls * 10 // max(self.total, 1)
            bar = "#" * done + "." * (self.width - done)
            end = "\n" if finished or not self._tty else ""
            self.out.write(f"\r  [{bar}] {run.calls}/{self.total} calls, {run.errors} failed{end}")
            self.out.flush()
