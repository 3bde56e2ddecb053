"""Public API, lifecycle, tags, metrics, containment of internal errors, config, pricing."""

from __future__ import annotations

import asyncio
import functools
import contextvars
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, AsyncIterator, Generator, Iterator

import openai
import pytest

import llmtrace
import llmtrace.context
import llmtrace.testing
from conftest import http_module, openai_client
from fake_api import FakeAPI
from llmtrace import _guard, pricing
from llmtrace.usage import Usage

HTTP = http_module(openai)
MESSAGES = [{"role": "user", "content": "hello"}]
CREATE = openai.resources.chat.completions.completions.Completions.create


def _chat(client: Any, **kw: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kw)


def test_public_api_is_small() -> None:
    assert sorted(llmtrace.__all__) == llmtrace.__all__
    assert set(llmtrace.__all__) == {"BudgetExceeded", "ConfigError", "__version__", "flush", "instrument", "tags", "uninstrument"}


def test_attribute_names_live_in_one_module() -> None:
    root = Path(llmtrace.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "attributes.py":
            continue
        assert not re.search(r"""["']gen_ai\.""", path.read_text()), f"{path} spells a gen_ai.* name itself"


def test_instrument_twice_and_uninstrument_restores() -> None:
    original = openai.resources.chat.completions.completions.Completions.__dict__["create"]
    with llmtrace.testing.capture() as captured:
        llmtrace.instrument()  # again: no second patch, no second span
        _chat(openai_client(FakeAPI(HTTP)))
        assert len(captured.spans()) == 1
        assert openai.resources.chat.completions.completions.Completions.__dict__["create"] is not original
    assert openai.resources.chat.completions.completions.Completions.__dict__["create"] is original
    _chat(openai_client(FakeAPI(HTTP)))
    assert len(captured.spans()) == 1  # nothing after uninstrument


@pytest.mark.parametrize("order", ["before", "after"])
def test_instrument_before_or_after_the_sdk_import(order: str, tmp_path: Path) -> None:
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import llmtrace
exporter = InMemorySpanExporter(); provider = TracerProvider(); provider.add_span_processor(SimpleSpanProcessor(exporter))
assert "openai" not in sys.modules
if {order!r} == "before":
    llmtrace.instrument(tracer_provider=provider)
    from openai.resources.chat.completions.completions import Completions  # a cached reference, taken after
from conftest import openai_client, http_module
import openai
from fake_api import FakeAPI
if {order!r} == "after":
    llmtrace.instrument(tracer_provider=provider)
openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
print(len(exporter.get_finished_spans()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_existing_global_tracer_provider_is_reused_not_replaced(tmp_path: Path) -> None:
    script = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
provider = TracerProvider()
trace.set_tracer_provider(provider)
import llmtrace
llmtrace.instrument()
assert trace.get_tracer_provider() is provider
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_tags_context_decorator_nesting_threads_and_async(captured: Any) -> None:
    client = openai_client(FakeAPI(HTTP))

    @llmtrace.tags(feature="summarize")
    def summarize() -> None:
        _chat(client)

    with llmtrace.tags(user="u1", tenant="acme", session="s-9", plan="pro"):
        summarize()
        with llmtrace.tags(tenant="globex"):
            _chat(client)

    def in_thread() -> None:
        with llmtrace.tags(tenant="thread-co"):
            _chat(client)

    workers = [threading.Thread(target=in_thread) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    async def with_tags_async(name: str) -> None:
        aclient = openai_client(FakeAPI(HTTP), is_async=True)
        with llmtrace.tags(tenant=name):
            await asyncio.sleep(0)
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    async def main() -> None:
        await asyncio.gather(with_tags_async("t-a"), with_tags_async("t-b"))

    asyncio.run(main())
    spans = captured.spans()
    first, second = spans[0].attributes, spans[1].attributes
    assert first["llmtrace.feature"] == "summarize" and first["llmtrace.tenant"] == "acme"
    assert first["user.id"] == "u1" and first["gen_ai.conversation.id"] == "s-9" and first["llmtrace.tag.plan"] == "pro"
    assert second["llmtrace.tenant"] == "globex" and second["user.id"] == "u1" and "llmtrace.feature" not in second
    assert [s.attributes["llmtrace.tenant"] for s in spans[2:5]] == ["thread-co"] * 3
    assert sorted(s.attributes["llmtrace.tenant"] for s in spans[5:]) == ["t-a", "t-b"]

def test_tags_on_an_async_function_behind_a_plain_decorator_hold_while_it_runs(captured: Any) -> None:
    """A plain (sync) decorator between @tags and an async function (a retry or logging wrapper): the tags held while
    the coroutine was created, not while it ran, and tagged nothing."""
    aclient = openai_client(FakeAPI(HTTP), is_async=True)

    def logged(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        return wrapper

    @llmtrace.tags(tenant="acme")
    @logged
    async def answer() -> None:
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    asyncio.run(answer())
    assert captured.spans()[0].attributes["llmtrace.tenant"] == "acme"
    assert llmtrace.context.current_tags() == {}


def test_one_tags_object_is_entered_by_many_tasks_and_threads_at_once(captured: Any) -> None:
    search = llmtrace.tags(feature="search")  # defined once, as an app would at module level
    aclient = openai_client(FakeAPI(HTTP), is_async=True)

    async def request(i: int) -> None:
        with search, llmtrace.tags(tenant=f"t{i}"):
            await asyncio.sleep(0.005 * (i + 1))  # the first task in leaves first
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert llmtrace.context.current_tags() == {}

    async def main() -> None:
        await asyncio.gather(*(request(i) for i in range(3)))

    asyncio.run(main())
    client = openai_client(FakeAPI(HTTP))
    failures: list[BaseException] = []

    def in_thread(i: int) -> None:
        try:
            with search:
                time.sleep(0.005 * (i + 1))
                _chat(client)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    workers = [threading.Thread(target=in_thread, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert failures == []
    spans = captured.spans()
    assert sorted((s.attributes.get("llmtrace.tenant"), s.attributes["llmtrace.feature"]) for s in spans[:3]) == [
        ("t0", "search"), ("t1", "search"), ("t2", "search")]
    assert [s.attributes["llmtrace.feature"] for s in spans[3:]] == ["search"] * 3


def test_a_tags_block_left_in_another_context_ends_quietly(captured: Any) -> None:
    """Starlette runs each step of a streaming response's generator in a fresh copy of the request's context."""
    client = openai_client(FakeAPI(HTTP))

    def body() -> Iterator[str]:
        with llmtrace.tags(tenant="acme"):
            yield _chat(client).choices[0].message.content or ""
        yield "done"

    request_context = contextvars.copy_context()
    steps = body()
    parts = [request_context.copy().run(next, steps), request_context.copy().run(next, steps)]
    assert parts == ["hello there", "done"]
    assert captured.spans()[0].attributes["llmtrace.tenant"] == "acme"
    # Entered and left in copies of one context: the copy it is left in gets the tags it had before.
    ctx = contextvars.copy_context()
    tagged = llmtrace.tags(feature="x")
    ctx.run(tagged.__enter__)
    copy = ctx.copy()
    copy.run(tagged.__exit__, None, None, None)
    assert copy.run(llmtrace.context.current_tags) == {} and ctx.run(llmtrace.context.current_tags) == {"llmtrace.feature": "x"}
    from opentelemetry import baggage

    assert copy.run(baggage.get_baggage, "llmtrace.feature") is None


def test_tags_blocks_that_end_out_of_order_leave_nothing_behind(captured: Any) -> None:
    """Two generators that each tag their work, read in turns (zip, a merge of two streamed answers): the first one
    entered ends first. Its tags must go, and the other's must not bring them back when it ends."""
    from opentelemetry import baggage

    client = openai_client(FakeAPI(HTTP))

    def worker(tenant: str) -> Iterator[str]:
        with llmtrace.tags(tenant=tenant, feature=f"f-{tenant}"):
            yield f"{tenant}-1"
            yield f"{tenant}-2"

    with llmtrace.tags(user="u1"):
        b = worker("B")
        for _ in zip(worker("A"), b):  # A ends first, while B's block is the innermost
            pass
        assert llmtrace.context.current_tags() == {"user.id": "u1", "llmtrace.tenant": "B", "llmtrace.feature": "f-B"}
        b.close()
        assert llmtrace.context.current_tags() == {"user.id": "u1"} and baggage.get_baggage("llmtrace.tenant") is None
        _chat(client)
    assert llmtrace.context.current_tags() == {} and baggage.get_all() == {}
    _chat(client)
    assert [dict(s.attributes).get("llmtrace.tenant") for s in captured.spans()] == [None, None]
    assert captured.spans()[0].attributes["user.id"] == "u1"


def test_tags_on_a_generator_function_hold_in_its_steps_not_between_them(captured: Any) -> None:
    """A streamed HTTP response's body is a generator: the calls it makes carry its tags, the reader's own do not,
    and sends, throws, close and the return value reach it as they would."""
    client = openai_client(FakeAPI(HTTP))
    closed: list[dict[str, str]] = []

    @llmtrace.tags(tenant="acme")
    def body() -> Generator[str, str, str]:
        try:
            reply = yield _chat(client).choices[0].message.content or ""
            yield reply.upper()
            return "the end"
        finally:
            closed.append(dict(llmtrace.context.current_tags()))

    steps = body()
    assert next(steps) == "hello there"
    assert llmtrace.context.current_tags() == {}  # the reader's calls between steps are not the body's
    _chat(client)
    assert steps.send("ok") == "OK"
    with pytest.raises(StopIteration) as stop:
        next(steps)
    assert stop.value.value == "the end" and closed == [{"llmtrace.tenant": "acme"}]
    steps = body()
    next(steps)
    steps.close()  # its finally block runs under its tags too
    assert closed[-1] == {"llmtrace.tenant": "acme"}

    @llmtrace.tags(feature="stream")
    async def async_body() -> AsyncIterator[str]:
        yield (await openai_client(FakeAPI(HTTP), is_async=True).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES)).choices[0].message.content or ""  # fmt: skip
        yield str(dict(llmtrace.context.current_tags()))

    async def read() -> list[str]:
        return [part async for part in async_body()]

    assert asyncio.run(read()) == ["hello there", "{'llmtrace.feature': 'stream'}"]
    tenants = [(dict(s.attributes).get("llmtrace.tenant"), dict(s.attributes).get("llmtrace.feature")) for s in captured.spans()]
    assert tenants == [("acme", None), (None, None), ("acme", None), (None, "stream")]


def test_tags_on_an_async_generator_pass_what_the_reader_sends_throws_and_closes() -> None:
    """An async generator decorated with tags behaves as it would undecorated (an @asynccontextmanager around a
    transaction: its except and finally blocks run when the reader's block raises, not later)."""

    def body(log: list[Any]) -> Any:
        async def steps() -> Any:
            try:
                while True:
                    try:
                        log.append(("got", (yield 1), dict(llmtrace.context.current_tags())))
                    except ValueError as exc:
                        log.append(("caught", str(exc)))
            finally:
                log.append(("cleanup", dict(llmtrace.context.current_tags())))

        return steps

    async def read(make: Any) -> list[Any]:
        log: list[Any] = []
        steps = make(body(log))()
        await steps.asend(None)
        await steps.asend("hello")
        log.append(("athrow returned", await steps.athrow(ValueError("x"))))
        await steps.aclose()
        log.append("closed")
        return log

    plain = asyncio.run(read(lambda f: f))
    tagged = asyncio.run(read(llmtrace.tags(feature="f")))
    def shape(entry: Any) -> Any:  # what happened, without the tags seen
        return entry if isinstance(entry, str) else entry[:1] if entry[0] == "cleanup" else entry[:2]

    assert [shape(e) for e in tagged] == [shape(e) for e in plain]
    assert [shape(e) for e in plain] == [("got", "hello"), ("caught", "x"), ("athrow returned", 1), ("cleanup",), "closed"]
    assert plain[0][2] == {} and tagged[0][2] == {"llmtrace.feature": "f"}
    assert tagged[-2] == ("cleanup", {"llmtrace.feature": "f"})


def test_a_call_the_app_cancels_is_not_an_error(captured: Any) -> None:
    async def slow(request: Any) -> Any:
        await asyncio.sleep(5)
        return HTTP.Response(200, json={})

    async def main() -> None:
        client = openai.AsyncOpenAI(api_key="sk-test", max_retries=0,
                                    http_client=HTTP.AsyncClient(transport=HTTP.MockTransport(slow)))
        with pytest.raises(asyncio.TimeoutError):  # the app gives up on the call: a timeout, a closed connection
            await asyncio.wait_for(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES), 0.05)

    asyncio.run(main())
    span = captured.spans()[0]
    assert span.status.status_code.name == "UNSET" and "error.type" not in span.attributes


def test_requests_that_differ_only_outside_their_messages_are_not_duplicates() -> None:
    from llmtrace.providers import anthropic as anthropic_adapter
    from llmtrace.providers import openai as openai_adapter

    messages = [{"role": "user", "content": "yes"}]
    content = anthropic_adapter.MESSAGES.input_content
    assert content({"system": "You sell shoes.", "messages": messages}) != content({"system": "You fix bikes.", "messages": messages})
    content = openai_adapter.RESPONSES.input_content
    assert content({"input": "yes", "previous_response_id": "resp_1"}) != content({"input": "yes", "previous_response_id": "resp_2"})
    assert content({"input": "yes", "instructions": "Be brief."}) != content({"input": "yes", "instructions": "Be kind."})


def test_tags_reach_baggage() -> None:
    from opentelemetry import baggage

    with llmtrace.tags(tenant="acme"):
        assert baggage.get_baggage("llmtrace.tenant") == "acme"
    assert baggage.get_baggage("llmtrace.tenant") is None


def test_content_capture_is_opt_in_and_never_includes_keys() -> None:
    with llmtrace.testing.capture(capture_content=True) as captured:
        _chat(openai_client(FakeAPI(HTTP)))
    a = captured.spans()[0].attributes
    assert "hello" in a["gen_ai.input.messages"] and "hello there" in a["gen_ai.output.messages"]
    assert not any("sk-test" in str(v) for v in a.values())


def test_metrics_with_bounded_tenant_labels() -> None:
    with llmtrace.testing.capture(metric_tag_top_k=2) as captured:
        client = openai_client(FakeAPI(HTTP))
        for tenant in ["a", "a", "a", "b", "b", "c"]:
            with llmtrace.tags(tenant=tenant):
                _chat(client)
        metrics = captured.metrics()
    tokens = metrics["gen_ai.client.token.usage"]
    inputs = [p for p in tokens if p.attributes["gen_ai.token.type"] == "input"]
    assert sum(p.sum for p in inputs) == 6 * 120
    assert {p.attributes["llmtrace.tenant"] for p in inputs} == {"a", "b", "__other__"}
    assert list(tokens[0].explicit_bounds[:3]) == [1, 4, 16]
    cost = sum(p.value for p in metrics["llmtrace.cost"])
    assert cost == pytest.approx(6 * sum(s.attributes["llmtrace.cost.usd"] for s in captured.spans()[:1]))
    assert sum(p.count for p in metrics["gen_ai.client.operation.duration"]) == 6


def test_an_internal_error_never_reaches_the_user(captured: Any,
                                                  internal_errors_fail_tests: list[BaseException]) -> None:
    from llmtrace.providers import openai as adapter

    def broken(response: Any) -> Any:
        raise ValueError("llmtrace bug")

    object.__setattr__(adapter.CHAT, "parse", broken)
    try:
        client = openai_client(FakeAPI(HTTP))
        raw = openai_client(FakeAPI(HTTP))
        expected = raw.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        result = _chat(client)
    finally:
        object.__setattr__(adapter.CHAT, "parse", adapter._parse_choices_response)
    assert result.choices[0].message.content == "hello there"
    assert type(result) is type(expected.parse())
    assert [str(e) for e in internal_errors_fail_tests] == ["llmtrace bug", "llmtrace bug"]
    internal_errors_fail_tests.clear()  # expected here: the guard contained them
    assert len(captured.spans()) == 2  # the spans still ended
    assert _guard.internal_error_count() >= 2


def test_an_internal_error_while_the_span_is_finished_still_ends_it(
    monkeypatch: pytest.MonkeyPatch, internal_errors_fail_tests: list[BaseException]
) -> None:
    """An error in llmtrace while a call is traced (reading the prompt, building the answer's attributes) loses
    what it was building, never the span."""
    from llmtrace import call as core
    from llmtrace.providers import openai as adapter

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("llmtrace bug")

    monkeypatch.setattr(core, "to_json", broken)  # the answer's content, once the span is being finished
    object.__setattr__(adapter.CHAT, "content_attributes", broken)  # the prompt, when the span starts
    try:
        with llmtrace.testing.capture(capture_content=True) as captured:
            result = _chat(openai_client(FakeAPI(HTTP)))
    finally:
        object.__setattr__(adapter.CHAT, "content_attributes", adapter.openai_content.chat_input)
    assert result.choices[0].message.content == "hello there"
    assert [str(e) for e in internal_errors_fail_tests] == ["llmtrace bug", "llmtrace bug"]
    internal_errors_fail_tests.clear()  # expected here: the guard contained them
    (span,) = captured.spans()
    assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini" and span.end_time is not None
    assert span.attributes["llmtrace.cost.usd"] > 0  # what finishing recorded beside the content is kept


def test_an_internal_error_in_finishing_a_span_still_ends_it(internal_errors_fail_tests: list[BaseException]) -> None:
    from llmtrace.providers import openai as adapter

    def broken(response: Any) -> Any:
        result = adapter._parse_choices_response(response)
        result.usage = "not usage"  # type: ignore[assignment]  # finishing fails midway
        return result

    object.__setattr__(adapter.CHAT, "parse", broken)
    try:
        with llmtrace.testing.capture() as captured:
            result = _chat(openai_client(FakeAPI(HTTP)))
    finally:
        object.__setattr__(adapter.CHAT, "parse", adapter._parse_choices_response)
    assert result.choices[0].message.content == "hello there"
    assert len(internal_errors_fail_tests) == 1
    internal_errors_fail_tests.clear()  # expected here: the guard contained it
    assert len(captured.spans()) == 1


def test_user_exceptions_pass_through_as_the_same_object(captured: Any) -> None:
    boom = KeyboardInterrupt()

    def handler(request: Any) -> Any:
        raise boom

    with pytest.raises(KeyboardInterrupt) as info:
        _chat(openai_client(handler, max_retries=0))
    assert info.value is boom
    span = captured.spans()[0]  # the app was stopped (Ctrl-C): not the call failing
    assert "error.type" not in span.attributes and span.status.status_code.name == "UNSET"


def test_config_file_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "llmtrace.toml"
    good.write_text('[llmtrace]\ncapture_content = true\n\n[prices."my-model"]\ninput_mtok = 1.0\noutput_mtok = 2.0\n')
    with llmtrace.testing.capture(config_file=str(good)) as captured:
        _chat(openai_client(FakeAPI(HTTP, model="my-model")))
    a = captured.spans()[0].attributes
    assert "gen_ai.input.messages" in a
    bad = tmp_path / "bad.toml"
    bad.write_text("[llmtrace\ncapture_content = true\n")
    with pytest.raises(llmtrace.ConfigError, match="bad.toml"):
        llmtrace.instrument(config_file=str(bad))
    bad.write_text("[llmtrace]\ncapture_contnet = true\n")
    with pytest.raises(llmtrace.ConfigError, match="capture_contnet"):
        llmtrace.instrument(config_file=str(bad))
    monkeypatch.setenv("LLMTRACE_CAPTURE_CONTENT", "maybe")
    with pytest.raises(llmtrace.ConfigError, match="LLMTRACE_CAPTURE_CONTENT"):
        llmtrace.instrument()
    from llmtrace import call

    assert call.runtime is None  # nothing half-applied


def test_every_option_is_also_its_llmtrace_variable(tmp_path: Path) -> None:
    from llmtrace import config

    other = tmp_path / "other.toml"
    other.write_text("[llmtrace]\ncapture_content = true\n")
    environ = {"LLMTRACE_PRICES": '{"my-model": {"input_mtok": 1, "output_mtok": 2}}', "LLMTRACE_CONFIG_FILE": str(other)}
    settings = config.load({}, environ)
    assert settings.prices == {"my-model": {"input_mtok": 1, "output_mtok": 2}}
    assert settings.capture_content and settings.config_file == str(other)  # the file it names is read
    with pytest.raises(llmtrace.ConfigError, match="LLMTRACE_PRICES: prices must be JSON"):
        config.load({}, {"LLMTRACE_PRICES": "my-model=1,2"})
    # An empty variable (compose and Kubernetes files leave them so) is unset; an empty list is none.
    empty = config.load({}, {"LLMTRACE_DB": "", "LLMTRACE_RETENTION_DAYS": " ", "LLMTRACE_STORE": "", "LLMTRACE_ANOMALY_DETECTORS": ""})
    assert (empty.db, empty.retention_days, empty.store, empty.anomaly_detectors) == (None, 0, True, ())


def test_metric_labels_follow_the_busiest_tenants_after_many_one_offs() -> None:
    from llmtrace.metrics import LabelLimiter

    limiter = LabelLimiter((), top_k=3)
    for i in range(12_000):  # a flood of one-off tenants fills what the limiter counts
        limiter.label(f"once-{i}")
    assert [limiter.label("newco") for _ in range(600)][-1] == "newco"
    assert limiter.label("once-11999") == "__other__"


@pytest.mark.parametrize(
    "content, error",
    [
        ('[prices."m"]\ninput_mtok = 1\noutput = 2\n', r"\[prices\]: prices for 'm': unknown output"),
        ('[prices."m"]\ninput_mtok = 1\n', "output_mtok missing"),
        ('[prices."m"]\ninput_mtok = 1\noutput_mtok = "2"\n', "price output_mtok for model 'm' must be a non-negative"),
        ('[prices."m"]\ninput_mtok = -1\noutput_mtok = 2\n', "price input_mtok for model 'm' must be a non-negative"),
        ("[prices]\nm = 5\n", "prices for 'm' must be a table"),
        ("[prices.gpt-4.1]\ninput_mtok = 1\noutput_mtok = 2\n", r"prices for 'gpt-4': unknown 1 .*\[prices.\"gpt-4.1\"\]"),
        ('[provider_prices.groq."m"]\ninput_mtok = 1\n', "provider_prices for 'groq': prices for 'm': output_mtok missing"),
        ('[provider_prices.groq]\nm = 1\n', "provider_prices for 'groq': prices for 'm' must be a table"),
        ('[provider_prices]\ngroq = 1\n', "provider_prices for 'groq' must be a table of model -> rates"),
        ("[llmtrace]\nretention_days = 1.5\n", r"\[llmtrace\]: retention_days must be a whole number"),
        ("[llmtrace]\nretention_days = 1000000\n", r"retention_days must be a whole number from 0 to 36,600, got 1000000"),
        ("[llmtrace]\nflush_interval = inf\n", "flush_interval must be a positive number"),
        # Past threading's longest wait, the store's writer thread died on it (the budget monitor's too).
        ("[llmtrace]\nflush_interval = 1e10\n", r"flush_interval must be a number of seconds, at most a day \(86400\), got 1"),
        ("[llmtrace]\nmax_buffered_spans = 0\n", "max_buffered_spans must be a whole number 1 or more, got 0"),
        ("[llmtrace]\nmetric_tag_top_k = '\u00b2'\n", "metric_tag_top_k must be a whole number"),  # isdigit(), not int()
        ("[anomalies]\ninterval = 0\n", r"\[anomalies\]: anomaly_interval must be a positive number"),
        ("[alert]\nwebhook_url = 'http://x'\n", r"unknown table\(s\) alert"),
        # One setting twice: one of them was dropped without a word.
        ("[llmtrace]\nalert_webhook_url = 'http://a'\n[alerts]\nwebhook_url = 'http://b'\n",
         r"\[alerts\] webhook_url sets alert_webhook_url, which \[llmtrace\] sets too: give it once"),
        ("[llmtrace.prices.m]\ninput_mtok = 1\noutput_mtok = 2\n[prices.n]\ninput_mtok = 1\noutput_mtok = 2\n",
         r"\[prices\] sets prices, which \[llmtrace\] sets too"),
        ("[[budgets]]\nscope = 'global'\nperiod = 'day'\nlimit_usd = inf\n", "limit_usd"),
    ],
)
def test_a_malformed_config_file_is_a_config_error_naming_where(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "llmtrace.toml"
    path.write_text(content)
    with pytest.raises(llmtrace.ConfigError, match=error) as caught:
        llmtrace.instrument(config_file=str(path))
    assert str(path) in str(caught.value)
    from llmtrace import call

    assert call.runtime is None


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "llmtrace.toml"
    path.write_bytes("[llmtrace]\nservice_name = 'caf\u00e9'\n".encode("latin-1"))
    with pytest.raises(llmtrace.ConfigError, match="not UTF-8"):
        llmtrace.instrument(config_file=str(path))


def test_fast_prices_equal_genai_prices_for_every_model() -> None:
    from genai_prices import data_snapshot

    usages = [Usage(uncached_input=1234, cache_read=300, cache_write=50, visible_output=400, reasoning=77),
              Usage(uncached_input=10, cache_write=500, cache_write_1h=200, visible_output=3),
              Usage(uncached_input=250_000, visible_output=10), Usage(uncached_input=900, visible_output=90, web_searches=3),
              Usage(uncached_input=700, visible_output=70, web_searches=1, file_searches=4),
              Usage(uncached_input=800, cache_read=200, visible_output=300, input_audio=600, output_audio=250)]
    checked = 0
    now = datetime.now(timezone.utc)
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            price = pricing._compile(model.id, model.get_prices(now))
            for usage in usages:
                try:
                    expected = model.calc_price(pricing.genai_usage(usage), provider).total_price
                except (ValueError, LookupError):
                    continue
                assert price.cost(usage).total == pytest.approx(float(Decimal(expected)), rel=1e-9, abs=1e-12), model.id
                checked += 1
    assert checked > 500


def test_a_tiered_fee_per_search_takes_genai_prices_exact_calculation() -> None:
    from genai_prices.types import ModelPrice, Tier, TieredPrices

    # No model has one today: a fee that drops above 1,000 input tokens.
    fee = TieredPrices(base=Decimal(10), tiers=[Tier(start=1000, price=Decimal(5))])
    model_price = ModelPrice(input_mtok=Decimal(1), output_mtok=Decimal(4), web_searches_kcount=fee)
    usage = Usage(uncached_input=2000, visible_output=10, web_searches=3)
    expected = float(model_price.calc_price(pricing.genai_usage(usage))["total_price"])
    assert pricing._compile("m", model_price).cost(usage).total == pytest.approx(expected, rel=1e-9)


def test_tokenizer_files_match_tiktokens_hashes() -> None:
    from llmtrace import tokenizer

    assert tokenizer.count_text("gpt-4o", "Hello world") == 2
    assert tokenizer.count_text("gpt-3.5-turbo", "Hello world") == 2


def test_llm_span_is_a_child_of_the_current_span_or_a_root(captured: Any) -> None:
    client = openai_client(FakeAPI(HTTP))
    app_tracer = captured.tracer_provider.get_tracer("the-app")
    with app_tracer.start_as_current_span("POST /search") as request_span:
        _chat(client)
    _chat(client)
    nested, request, root = captured.spans()
    assert request.name == "POST /search"
    assert nested.parent is not None and nested.parent.span_id == request_span.get_span_context().span_id
    assert nested.context.trace_id == request.context.trace_id
    assert root.parent is None and root.context.trace_id != request.context.trace_id


def test_instrument_leaves_no_half_imported_module_for_the_apps_first_call() -> None:
    """genai-prices imports httpx2, which openai 2.x looks up in sys.modules on each request: imported by the
    warm-up thread, the app's first call could see it half-initialised (seen: AttributeError in create())."""
    code = "import sys, llmtrace; llmtrace.instrument(store=False); print('genai_prices' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


@pytest.mark.parametrize("limits", [{}, {"max_attribute_length": 6}, {"max_span_attributes": 12}], ids=["default", "short", "few"])
def test_end_attributes_are_what_the_sdks_own_path_makes(limits: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # llmtrace writes a call's end attributes into the SDK span directly when nothing needs cleaning:
    # the span must equal what set_attributes() makes, and limits the app set must still apply.
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from llmtrace import call

    def one_span() -> Any:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(span_limits=SpanLimits(**limits))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        llmtrace.instrument(tracer_provider=provider, store=False)
        try:
            with llmtrace.tags(tenant="acme-corporation", user="u-1"):
                _chat(openai_client(FakeAPI(HTTP)), temperature=0.5, max_tokens=20)
        finally:
            llmtrace.uninstrument()
        (span,) = exporter.get_finished_spans()
        return span

    direct = one_span()
    monkeypatch.setattr(call, "add_attributes", lambda span, attrs: span.set_attributes(attrs))
    public = one_span()
    assert dict(direct.attributes) == dict(public.attributes)
    assert direct.dropped_attributes == public.dropped_attributes
    if limits.get("max_attribute_length"):
        assert direct.attributes["llmtrace.tenant"] == "acme-c"
    if limits.get("max_span_attributes"):
        assert len(direct.attributes) == 12 and direct.dropped_attributes > 0
    else:
        assert direct.dropped_attributes == 0 and direct.attributes["gen_ai.usage.input_tokens"] > 0
