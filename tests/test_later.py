"""OpenAI background responses: the generation's usage and cost come with a later read of the response
(``responses.retrieve``, ``.cancel``, a resumed stream), recorded once, on a span of its own (llmtrace.later)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import genai_prices
import openai
import pytest

import llmtrace
import llmtrace.testing
from conftest import http_module, openai_client
from fake_api import sse
from llmtrace import later, query

HTTP = http_module(openai)

USAGE = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 200}, "output_tokens": 900,
         "output_tokens_details": {"reasoning_tokens": 700}, "total_tokens": 2100}
CREATED_AT = int(time.time()) - 7200  # queued two hours ago, done in 90 s, read back only now
COMPLETED_AT = CREATED_AT + 90


def _response(response_id: str, status: str, **more: Any) -> dict[str, Any]:
    body = {"id": response_id, "object": "response", "created_at": CREATED_AT, "model": "o3-2025-04-16", "status": status,
            "background": True, "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    if status not in ("queued", "in_progress"):
        body.update(usage=USAGE)
    if status == "completed":  # the API gives it only then
        body.update(completed_at=COMPLETED_AT)
    return {**body, **more}


class BackgroundAPI:
    """Creates responses as queued; each read of one moves it on a step: in_progress, then finished."""

    def __init__(self, finished: str = "completed") -> None:
        self.finished = finished
        self.reads: dict[str, int] = {}
        self.created = 0

    def __call__(self, request: Any) -> Any:
        path = request.url.path
        if request.method == "POST" and path.endswith("/responses"):
            self.created += 1
            body = json.loads(request.content)
            response_id = f"resp_{self.created}"
            if body.get("background") is not True:
                return HTTP.Response(200, json={**_response(response_id, "completed"), "background": False})
            self.reads[response_id] = 0
            if body.get("stream") is True:  # the connection drops after the first event
                self.reads[response_id] = 1
                created = {"type": "response.created", "sequence_number": 0, "response": _response(response_id, "queued")}
                return HTTP.Response(200, content=sse([("response.created", created)]),
                                     headers={"content-type": "text/event-stream"})  # fmt: skip
            return HTTP.Response(200, json=_response(response_id, "queued"))
        response_id = path.split("/")[-2 if path.endswith("/cancel") else -1]
        if path.endswith("/cancel"):
            return HTTP.Response(200, json=_response(response_id, "cancelled"))
        reads = self.reads[response_id] = self.reads.get(response_id, 0) + 1
        status = "in_progress" if reads == 1 else self.finished
        if request.url.params.get("stream") == "true":
            events = [("response.created", {"type": "response.created", "sequence_number": 1,
                                                "response": _response(response_id, "in_progress")}),
                      ("response.in_progress", {"type": "response.in_progress", "sequence_number": 2,
                                                "response": _response(response_id, "in_progress")}),
                      (f"response.{self.finished}", {"type": f"response.{self.finished}", "sequence_number": 3,
                                                     "response": _response(response_id, self.finished)})]
            return HTTP.Response(200, content=sse(events), headers={"content-type": "text/event-stream"})
        return HTTP.Response(200, json=_response(response_id, status))


@contextmanager
def _under_a_block_budget(tmp_path: Path, limit_usd: float) -> Iterator[tuple[Any, BackgroundAPI, Any]]:
    """(client, API, captured spans), instrumented with the store and a block budget for tenant acme, whose calls
    these are."""
    from llmtrace import budgets

    budgets.add(scope="tenant", key="acme", period="day", limit_usd=limit_usd, action="block")
    api = BackgroundAPI()
    try:
        with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), budget_refresh_interval=3600,
                                      anomaly_detectors=[]) as captured, llmtrace.tags(tenant="acme"):  # fmt: skip
            yield openai_client(api), api, captured
    finally:
        budgets.clear()


def _guard() -> Any:
    from llmtrace import call

    assert call.runtime is not None and call.runtime.guard is not None
    return call.runtime.guard


def _priced_cost() -> float:
    usage = genai_prices.Usage(input_tokens=1200, cache_read_tokens=200, output_tokens=900)
    return float(genai_prices.calc_price(usage, "o3-2025-04-16", provider_id="openai").total_price)


def _generation(captured: Any) -> Any:
    spans = [s for s in captured.spans() if s.attributes.get("llmtrace.response.background")]
    assert len(spans) == 1, [dict(s.attributes) for s in captured.spans()]
    return spans[0]


def test_a_background_response_read_back_finished_records_its_generation_once(tmp_path: Path) -> None:
    db = str(tmp_path / "llmtrace.duckdb")
    client = openai_client(BackgroundAPI())
    with llmtrace.testing.capture(store=True, db=db) as captured:
        with llmtrace.tags(tenant="acme", feature="research"):
            queued = client.responses.create(model="o3", input="a long task", background=True, max_output_tokens=4000)
        assert queued.status == "queued"
        (create,) = captured.spans()
        assert create.attributes["llmtrace.usage.source"] == "none" and "llmtrace.cost.usd" not in create.attributes

        assert client.responses.retrieve(queued.id).status == "in_progress"
        assert len(captured.spans()) == 1  # still running: nothing to record
        read_at = time.time_ns()
        finished = client.responses.retrieve(queued.id)
        assert finished.status == "completed" and finished.usage.output_tokens == 900  # the app's object, as it came
        client.responses.retrieve(queued.id)  # read again: the same generation, not a new one

    generation = _generation(captured)
    assert len(captured.spans()) == 2
    a = generation.attributes
    assert generation.name == "chat o3" and generation.parent.span_id == create.context.span_id
    assert generation.context.trace_id == create.context.trace_id
    # As long as the model worked (the server's clock), not the two hours until the app read it; ended when it did.
    assert generation.end_time - generation.start_time == pytest.approx((COMPLETED_AT - CREATED_AT) * 10**9, abs=5e8)
    assert generation.end_time >= read_at
    assert a["gen_ai.usage.input_tokens"] == 1200 and a["gen_ai.usage.output_tokens"] == 900
    assert a["gen_ai.usage.cache_read.input_tokens"] == 200 and a["gen_ai.usage.reasoning.output_tokens"] == 700
    assert a["llmtrace.usage.source"] == "provider" and a["gen_ai.response.finish_reasons"] == ("completed",)
    assert a["llmtrace.cost.usd"] == pytest.approx(_priced_cost(), rel=1e-9)
    # The create call's request and tags; not its request hash: the generation is not the same request sent again.
    assert a["llmtrace.tenant"] == "acme" and a["llmtrace.feature"] == "research"
    assert a["gen_ai.request.max_tokens"] == 4000 and a["gen_ai.response.id"] == queued.id
    assert "llmtrace.request.hash" in create.attributes and "llmtrace.request.hash" not in a
    # The store counts the generation's cost once, under the create call's tags.
    (acme,) = query.spend_by("tenant", query.TimeRange.starting_at(0), db=db)
    assert acme["key"] == "acme" and acme["calls"] == 2 and acme["unpriced_calls"] == 0
    assert acme["cost_usd"] == pytest.approx(_priced_cost(), rel=1e-9)


def test_responses_this_process_did_not_queue_record_nothing(captured: Any) -> None:
    api = BackgroundAPI()
    client = openai_client(api)
    client.responses.create(model="o3", input="a long task", background=True)  # so that something is waited for
    api.reads["resp_other"] = 1
    assert client.responses.retrieve("resp_other").status == "completed"  # queued by another process
    answered = client.responses.create(model="o3", input="a short task")  # answered at once, costed on its span
    client.responses.retrieve(answered.id)  # read back later (a chat history page)
    assert [s.attributes.get("llmtrace.response.background") for s in captured.spans()] == [None, None]


def test_a_cancelled_background_response_records_what_it_used(captured: Any) -> None:
    async def run() -> Any:
        client = openai_client(BackgroundAPI(), is_async=True)
        queued = await client.responses.create(model="o3", input="a long task", background=True)
        return await client.responses.cancel(queued.id)

    assert asyncio.run(run()).status == "cancelled"
    a = _generation(captured).attributes
    assert a["gen_ai.response.finish_reasons"] == ("cancelled",) and a["gen_ai.usage.output_tokens"] == 900


@pytest.mark.parametrize("how", ["stream helper", "retrieve stream", "async retrieve stream"])
def test_a_resumed_stream_of_a_background_response_records_its_generation(captured: Any, how: str) -> None:
    api = BackgroundAPI()
    api_client = openai_client(api)
    queued = api_client.responses.create(model="o3", input="a long task", background=True, stream=False)
    api.reads[queued.id] = 1  # already in progress: the stream runs to the end
    if how == "stream helper":
        with api_client.responses.stream(response_id=queued.id) as stream:
            kinds = [event.type for event in stream]
    elif how == "retrieve stream":
        kinds = [event.type for event in api_client.responses.retrieve(queued.id, stream=True)]
    else:
        async def read() -> list[str]:
            client = openai_client(api, is_async=True)
            return [event.type async for event in await client.responses.retrieve(queued.id, stream=True)]

        kinds = asyncio.run(read())
    assert kinds == ["response.created", "response.in_progress", "response.completed"]  # every event reaches the app
    assert _generation(captured).attributes["llmtrace.cost.usd"] == pytest.approx(_priced_cost(), rel=1e-9)


@pytest.mark.parametrize("how", ["raw", "raw stream", "streaming response", "streaming response stream",
                                 "async streaming response", "async raw stream"])  # fmt: skip
def test_a_raw_read_of_a_background_response_records_its_generation(captured: Any, how: str) -> None:
    api = BackgroundAPI()
    client = openai_client(api)
    queued = client.responses.create(model="o3", input="a long task", background=True)
    api.reads[queued.id] = 1
    stream = "stream" in how
    if how.startswith("async"):
        aclient = openai_client(api, is_async=True)

        async def read() -> Any:
            if "raw" in how:
                return [e.type async for e in (await aclient.responses.with_raw_response.retrieve(queued.id, stream=True)).parse()]
            async with aclient.responses.with_streaming_response.retrieve(queued.id) as response:
                return (await response.parse()).status

        got = asyncio.run(read())
    elif how.startswith("raw"):
        parsed = client.responses.with_raw_response.retrieve(queued.id, stream=stream).parse()
        got = [e.type for e in parsed] if stream else parsed.status
    else:
        with client.responses.with_streaming_response.retrieve(queued.id, stream=stream) as response:
            parsed = response.parse()
            got = [e.type for e in parsed] if stream else parsed.status
    assert got in ("completed", ["response.created", "response.in_progress", "response.completed"])
    assert _generation(captured).attributes["gen_ai.usage.input_tokens"] == 1200


def test_a_failed_background_response_is_an_error_with_its_usage(captured: Any) -> None:
    client = openai_client(BackgroundAPI(finished="failed"))
    queued = client.responses.create(model="o3", input="a long task", background=True)
    client.responses.retrieve(queued.id)
    client.responses.retrieve(queued.id)
    generation = _generation(captured)
    assert generation.status.status_code.name == "ERROR" and generation.attributes["error.type"] == "failed"
    assert generation.attributes["gen_ai.usage.input_tokens"] == 1200


def test_an_internal_error_reading_a_response_back_leaves_the_app_its_answer(
    captured: Any, monkeypatch: pytest.MonkeyPatch, internal_errors_fail_tests: list[BaseException]
) -> None:
    client = openai_client(BackgroundAPI())
    queued = client.responses.create(model="o3", input="a long task", background=True)
    client.responses.retrieve(queued.id)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("llmtrace bug")

    monkeypatch.setattr(llmtrace.call.Call, "later", broken)
    finished = client.responses.retrieve(queued.id)
    assert finished.status == "completed" and type(finished).__name__ == "Response"
    assert [str(e) for e in internal_errors_fail_tests] == ["llmtrace bug"]
    internal_errors_fail_tests.clear()  # expected here: the guard contained it


def test_responses_waited_for_are_bounded(captured: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    monkeypatch.setattr(later, "MAX_WAITING", 2)
    monkeypatch.setattr(later, "_waiting", type(later._waiting)())
    monkeypatch.setattr(later, "_forgotten", 0)
    api = BackgroundAPI()
    client = openai_client(api)
    ids = [client.responses.create(model="o3", input=f"task {i}", background=True).id for i in range(3)]
    assert list(later._waiting) == ids[1:]
    assert "the oldest are forgotten (1 so far)" in caplog.text
    for response_id in ids:
        api.reads[response_id] = 1
        client.responses.retrieve(response_id)
    assert len([s for s in captured.spans() if s.attributes.get("llmtrace.response.background")]) == 2


def test_uninstrument_stops_watching_for_answers(captured: Any) -> None:
    api = BackgroundAPI()
    client = openai_client(api)
    queued = client.responses.create(model="o3", input="a long task", background=True)
    llmtrace.uninstrument()
    llmtrace.instrument(tracer_provider=captured.tracer_provider, meter_provider=captured.meter_provider, store=False)
    api.reads[queued.id] = 1
    client.responses.retrieve(queued.id)  # the call was made under the earlier instrument()
    assert len(captured.spans()) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_forked_child_does_not_record_the_parents_background_responses(captured: Any) -> None:
    """Parent and child both reading the answer would record its generation twice: only the process that queued it
    records it."""
    api = BackgroundAPI()
    client = openai_client(api)
    queued = client.responses.create(model="o3", input="a long task", background=True)
    api.reads[queued.id] = 1
    pid = os.fork()
    if pid == 0:  # the child: exits at once, with its finding as its status
        os._exit(0 if not later._waiting else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    client.responses.retrieve(queued.id)
    assert _generation(captured).attributes["gen_ai.usage.input_tokens"] == 1200


def test_a_queued_background_response_holds_its_block_budget_reservation_until_it_is_read(tmp_path: Path) -> None:
    """Each create call answers at once with no cost: its reservation (the prompt and max_output_tokens at their
    dearest rates) stays until its generation is read, so a loop of queued jobs cannot pass a block budget."""
    from llmtrace import budgets, pricing

    price = pricing.price_for("openai", "o3")
    assert price is not None
    worst = 4000 * price.worst_output_per_token()
    budgets.add(scope="tenant", key="acme", period="day", limit_usd=2.5 * worst, action="block")
    api = BackgroundAPI()
    client = openai_client(api)
    try:
        with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), budget_refresh_interval=3600,
                                      anomaly_detectors=[]) as captured, llmtrace.tags(tenant="acme"):  # fmt: skip
            queued = [client.responses.create(model="o3", input="a long task", background=True, max_output_tokens=4000)
                      for _ in range(3)]  # fmt: skip
            with pytest.raises(llmtrace.BudgetExceeded):
                client.responses.create(model="o3", input="a long task", background=True, max_output_tokens=4000)
            for response in queued[:2]:
                api.reads[response.id] = 1
                client.responses.retrieve(response.id)  # their generations cost far less than their reservations
            client.responses.create(model="o3", input="a long task", background=True, max_output_tokens=4000)
    finally:
        budgets.clear()
    assert api.created == 4 and len([s for s in captured.spans() if s.attributes.get("llmtrace.response.background")]) == 2


def test_a_reservation_for_a_generation_never_read_here_is_released_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its answer may come by webhook, or another process may poll it: the budget must not stay held for ever."""
    from llmtrace import budgets, instrumentation, pricing

    price = pricing.price_for("openai", "o3")
    assert price is not None
    budgets.add(scope="tenant", key="acme", period="day", limit_usd=0.5 * 4000 * price.worst_output_per_token(),
                action="block")  # fmt: skip
    api = BackgroundAPI()
    client = openai_client(api)
    try:
        with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), budget_refresh_interval=3600,
                                      anomaly_detectors=[]), llmtrace.tags(tenant="acme"):  # fmt: skip
            client.responses.create(model="o3", input="a long task", background=True, max_output_tokens=4000)
            with pytest.raises(llmtrace.BudgetExceeded):
                client.responses.create(model="o3", input="a short task")
            monitor = instrumentation._monitor
            assert monitor is not None
            monitor.run_once(anomalies=False)  # within the hour: still held
            with pytest.raises(llmtrace.BudgetExceeded):
                client.responses.create(model="o3", input="a short task")
            monkeypatch.setattr(later, "HOLD_FOR_S", 0.0)
            monitor.run_once(anomalies=False)
            client.responses.create(model="o3", input="a short task")
    finally:
        budgets.clear()
    assert api.created == 2


def test_a_background_stream_cut_short_is_recorded_when_resumed(captured: Any) -> None:
    """OpenAI's documented pattern: create(background=True, stream=True), the connection drops, the app resumes with
    retrieve(stream=True, starting_after=cursor). The generation went on, billed whole: not an estimate of the part
    streamed before the drop."""
    client = openai_client(BackgroundAPI())
    events = list(client.responses.create(model="o3", input="a long task", background=True, stream=True))
    (create,) = captured.spans()
    assert create.attributes["llmtrace.usage.source"] == "none" and "llmtrace.cost.usd" not in create.attributes
    resumed = list(client.responses.retrieve(events[0].response.id, stream=True, starting_after=events[-1].sequence_number))
    assert resumed[-1].type == "response.completed"
    assert _generation(captured).attributes["llmtrace.cost.usd"] == pytest.approx(_priced_cost(), rel=1e-9)


def test_a_hold_released_while_its_response_is_read_is_released_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's hour-old release and the app's read of that very response, at once: the reservation goes once."""
    import dataclasses

    with _under_a_block_budget(tmp_path, 100.0) as (client, api, captured):
        queued = client.responses.create(model="o3", input="a long task", background=True, max_output_tokens=4000)
        api.reads[queued.id] = 1
        waiting = later._waiting[queued.id]
        parse = waiting.endpoint.parse

        def released_meanwhile(response: Any) -> Any:
            monkeypatch.setattr(later, "HOLD_FOR_S", 0.0)
            later.release_old_holds()
            return parse(response)

        later._waiting[queued.id] = dataclasses.replace(
            waiting, endpoint=dataclasses.replace(waiting.endpoint, parse=released_meanwhile))
        client.responses.retrieve(queued.id)
        assert all(held == pytest.approx(0.0) for held in _guard()._held.values()), _guard()._held
    assert _generation(captured).attributes["gen_ai.usage.input_tokens"] == 1200


def test_a_generation_the_response_gives_no_completion_time_for_is_an_instant_not_its_wait(captured: Any) -> None:
    """An incomplete (max_output_tokens), failed or cancelled response has no completed_at: its generation's duration
    is unknown, and the hours it may have waited to be read are no model's latency."""
    import dataclasses

    client = openai_client(BackgroundAPI(finished="incomplete"))
    queued = client.responses.create(model="o3", input="a long task", background=True)
    waiting = later._waiting[queued.id]  # queued two hours ago
    later._waiting[queued.id] = dataclasses.replace(waiting, created_ns=waiting.created_ns - 7200 * 10**9)
    client.responses.retrieve(queued.id)
    client.responses.retrieve(queued.id)
    generation = _generation(captured)
    assert generation.end_time - generation.start_time < 10**9


def test_a_generation_read_after_its_hold_was_released_still_counts_its_cost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _under_a_block_budget(tmp_path, 100.0) as (client, api, _):
        queued = client.responses.create(model="o3", input="a long task", background=True, max_output_tokens=4000)
        monkeypatch.setattr(later, "HOLD_FOR_S", 0.0)
        later.release_old_holds()
        assert all(held == pytest.approx(0.0) for held in _guard()._held.values())
        api.reads[queued.id] = 1
        client.responses.retrieve(queued.id)
        assert sum(_guard()._finished.values()) == pytest.approx(_priced_cost(), rel=1e-9)  # this process's count
