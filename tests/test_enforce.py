"""``block`` budgets: refused before the provider is called, counted from the store, this process's calls
and in-flight reservations, and across processes within the documented bound."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

import llmtrace
import llmtrace.testing
from conftest import anthropic_client, http_module, openai_client
from fake_api import FakeAPI
from llmtrace import attributes as A
from llmtrace import budgets, instrumentation, query
from llmtrace.store.files import resolve
from llmtrace.store.merge import merge
from store_helpers import emit, emit_at, provider_with_store

HERE = Path(__file__).parent
HI = [{"role": "user", "content": "hi"}]
NO_REFRESH = {"budget_refresh_interval": 3600, "anomaly_detectors": []}  # only the first read, at instrument()


@pytest.fixture(autouse=True)
def _no_code_budgets() -> Any:
    budgets.clear()
    yield
    budgets.clear()


def _config(tmp_path: Path, *tables: str) -> str:
    path = tmp_path / "llmtrace.toml"
    path.write_text("\n".join(f"[[budgets]]\n{table}\n" for table in tables))
    return str(path)


def _cost_of_one_call() -> float:
    with llmtrace.testing.capture() as captured:
        openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o-mini", messages=HI)
    cost = captured.spans()[0].attributes[A.COST_USD]
    assert cost > 0
    return float(cost)


def test_a_spent_budget_refuses_the_call_before_it_is_sent(tmp_path: Path) -> None:
    db = str(tmp_path / "spend.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    # $1.00 spent today, by another process say, in a call that took 500 ms
    emit_at(provider, datetime.utcnow() - timedelta(minutes=1), duration_s=0.5, **{A.TENANT: "acme", A.COST_USD: 1.0})
    writer.shutdown()
    config = _config(tmp_path, 'scope = "tenant"\nkey = "acme"\nperiod = "day"\nlimit_usd = 1.0\naction = "block"')
    api = FakeAPI(http_module(openai))
    client = openai_client(api)
    with llmtrace.testing.capture(store=True, db=db, config_file=config, **NO_REFRESH) as captured:
        with llmtrace.tags(tenant="acme"), pytest.raises(llmtrace.BudgetExceeded) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with llmtrace.tags(tenant="globex"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(api.requests) == 1  # globex's call; acme's never left the process
    exc = refused.value
    assert (exc.scope, exc.key, exc.limit_usd) == ("tenant", "acme", 1.0)
    assert exc.spent_usd == pytest.approx(1.0)
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert exc.period_end == tomorrow
    assert "tenant=acme is spent: $1.00 of $1.00 per day" in str(exc)
    blocked, sent = captured.spans()
    assert blocked.attributes[A.ERROR_TYPE] == "BudgetExceeded" and A.COST_USD not in blocked.attributes
    assert (blocked.attributes[A.HTTP_ATTEMPTS], sent.attributes[A.HTTP_ATTEMPTS]) == (0, 1)  # never sent
    # Nor in the GenAI metrics: the operation never happened (no duration, no error of the provider's).
    durations = captured.metrics()["gen_ai.client.operation.duration"]
    assert [(dict(point.attributes)[A.TENANT], point.count) for point in durations] == [("globex", 1)]
    assert sent.attributes[A.TENANT] == "globex" and sent.attributes[A.COST_USD] > 0
    # Reports count the refused call as blocked: not a provider's error, and no latency (it was never sent).
    today = query.TimeRange.last(timedelta(days=1))
    acme = {row["key"]: row for row in query.spend_by("tenant", today, db=db)}["acme"]
    assert (acme["calls"], acme["errors"], acme["blocked_calls"]) == (2, 0, 1)
    assert acme["p50_ms"] == pytest.approx(500)  # not halfway to the refused call's ~0 ms
    assert query.latency_percentiles(today, query.Filters(tenant="acme"), db=db)[0]["latency_p50_ms"] == pytest.approx(500)
    headline = query.summary(today, db=db)
    assert (headline["errors"], headline["blocked_calls"]) == (0, 1)
    assert all(row["errors"] == 0 for row in query.error_rates(today, db=db))


def test_this_process_calls_count_before_the_store_is_read_again(tmp_path: Path) -> None:
    cost = _cost_of_one_call()
    budgets.add(scope="global", period="24h", limit_usd=2.5 * cost, action="block")
    api = FakeAPI(http_module(openai))
    client = openai_client(api)
    with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), **NO_REFRESH):
        for _ in range(3):  # $0, $1c, $2c spent before each: all under 2.5c
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(llmtrace.BudgetExceeded) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(api.requests) == 3
    assert refused.value.spent_usd == pytest.approx(3 * cost) and refused.value.period_end is None


def test_an_idle_process_reads_the_store_again_only_once_something_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refreshes reuse the last figures while the store is unchanged (an idle worker does not open DuckDB every
    2 s), and read again as soon as any process writes a span or a merge changes the database."""
    reads: list[object] = []
    read = query.budget_spend
    monkeypatch.setattr(query, "budget_spend", lambda *a, **k: (reads.append(a), read(*a, **k))[1])
    db = str(tmp_path / "s.duckdb")
    budgets.add(scope="tenant", key="*", period="day", limit_usd=1.0, action="block")
    client = openai_client(FakeAPI(http_module(openai)))
    with llmtrace.testing.capture(store=True, db=db, **NO_REFRESH), llmtrace.tags(tenant="acme"):
        monitor = instrumentation._monitor
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        monitor.run_once(anomalies=False)  # writes the call's span: the figures it read are not kept
        merge(resolve(db))  # nothing pending from here on, so the writer's own rounds change nothing
        monitor.run_once(anomalies=False)  # nothing written during it: these are kept
        assert len(reads) == 3  # instrument()'s first round, then these two
        for _ in range(3):
            monitor.run_once(anomalies=False)
        assert len(reads) == 3
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # still under $1
        other, writer = provider_with_store(db, flush_interval=60)
        emit(other, 4, tenant="acme", cost=0.25)  # another process spends the budget
        writer.force_flush(merge=False)
        monitor.run_once(anomalies=False)
        assert len(reads) > 3
        with pytest.raises(llmtrace.BudgetExceeded) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        spent = refused.value.spent_usd
        assert spent > 1.0
        merge(resolve(db))  # the same spans, now in the database
        monitor.run_once(anomalies=False)
        with pytest.raises(llmtrace.BudgetExceeded) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert refused.value.spent_usd == pytest.approx(spent)
        writer.shutdown()


def test_a_budget_declared_in_code_after_instrument_holds_from_the_next_call(tmp_path: Path) -> None:
    """add() reads what the store holds, this process's calls not yet written to it included, before it returns (as
    instrument() does), not at the monitor's next round: the next call over the budget is refused."""
    db = str(tmp_path / "s.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 2, tenant="acme", cost=0.45)
    writer.shutdown()
    cost = _cost_of_one_call()
    api = FakeAPI(http_module(openai))
    client = openai_client(api)
    with llmtrace.testing.capture(store=True, db=db, flush_interval=60, **NO_REFRESH), llmtrace.tags(tenant="acme"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # in this process's writer, not in the store
        budgets.add(scope="tenant", key="*", period="month", limit_usd=0.9 + cost / 2, action="block")
        with pytest.raises(llmtrace.BudgetExceeded) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert refused.value.key == "acme" and refused.value.spent_usd == pytest.approx(0.9 + cost)
    assert len(api.requests) == 1


def test_an_alert_callback_may_declare_a_budget_and_runs_on_the_alerts_thread(tmp_path: Path) -> None:
    """add() reads the store on the app's thread for the guard alone: the alerts stay with the monitor thread, and the
    callbacks they run have a thread of their own, from which a callback may add a budget (no deadlock on the round
    under way)."""
    from llmtrace import alerts

    db = str(tmp_path / "s.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 2, tenant="acme", cost=0.5)
    writer.shutdown()
    seen: list[tuple[str, str]] = []
    escalated = threading.Event()

    def escalate(alert: Any) -> None:
        seen.append((alert.kind, threading.current_thread().name))
        if alert.kind == "budget_warning":
            budgets.add(scope="tenant", key="acme", period="day", limit_usd=1.5, action="block")
            escalated.set()

    alerts.on_alert(escalate)
    api = FakeAPI(http_module(openai))
    try:
        with llmtrace.testing.capture(store=True, db=db, **NO_REFRESH), llmtrace.tags(tenant="acme"):
            budgets.add(scope="global", period="day", limit_usd=10, action="block")
            budgets.add(scope="tenant", key="acme", period="day", limit_usd=1.2, action="alert")  # $1.00: a warning
            assert escalated.wait(20)
            client = openai_client(api)
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # $1.00 of $1.50
            instrumentation._monitor.run_once(anomalies=False)
    finally:
        alerts.remove_callback(escalate)
    assert seen[0] == ("budget_warning", "llmtrace-alerts") and all(name == "llmtrace-alerts" for _, name in seen)
    assert len(api.requests) == 1


def test_a_budget_added_while_the_store_is_read_waits_for_that_read_a_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two reads of the store for the guard never overlap (each replaces what the guard counted up to its own
    snapshot); add() waits for the monitor's, but not for ever."""
    from llmtrace import monitor as monitor_module

    reading, release = threading.Event(), threading.Event()
    active: list[int] = []
    overlaps: list[int] = []
    read = query.budget_spend

    def slow_read(*args: Any, **kwargs: Any) -> Any:
        active.append(1)
        overlaps.append(len(active))
        try:
            if threading.current_thread().name == "llmtrace-monitor" and not release.is_set():
                reading.set()
                release.wait(20)
            return read(*args, **kwargs)
        finally:
            active.pop()

    monkeypatch.setattr(query, "budget_spend", slow_read)
    with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), **NO_REFRESH):
        budgets.add(scope="global", period="day", limit_usd=10, action="alert")  # the monitor's round reads the store
        assert reading.wait(20)
        adding = threading.Thread(target=budgets.add, kwargs={"scope": "global", "period": "day", "limit_usd": 1, "action": "block"})
        adding.start()
        adding.join(1)
        assert adding.is_alive()  # waiting for the monitor's read
        release.set()
        adding.join(20)
        assert max(overlaps) == 1 and len(overlaps) >= 2
        rounds = instrumentation._monitor._rounds
        with rounds:  # a round that does not end
            monkeypatch.setattr(monitor_module, "ADD_WAIT_S", 0.2)
            budgets.add(scope="tenant", key="acme", period="day", limit_usd=1, action="block")  # gives up waiting
        assert "could not be read from the store within 0.2 s" in caplog.text


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_stream_in_flight_holds_its_worst_case_until_it_ends(tmp_path: Path, sdk: str) -> None:
    from llmtrace import pricing

    model = "gpt-4o-mini" if sdk == "openai" else "claude-3-5-haiku-20241022"
    price = pricing.price_for(sdk, model)
    assert price is not None
    max_tokens = 100_000
    worst = max_tokens * price.worst_output_per_token()
    budgets.add(scope="feature", key="chat", period="day", limit_usd=0.9 * worst, action="block")
    api = FakeAPI(http_module(openai if sdk == "openai" else anthropic))
    client = openai_client(api) if sdk == "openai" else anthropic_client(api)

    def one_call() -> None:
        if sdk == "openai":
            client.chat.completions.create(model=model, messages=HI, max_tokens=10)
        else:
            client.messages.create(model=model, messages=HI, max_tokens=10)

    with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), **NO_REFRESH) as captured:
        with llmtrace.tags(feature="chat"):
            if sdk == "openai":
                stream = client.chat.completions.create(model=model, messages=HI, max_tokens=max_tokens, stream=True)
                with pytest.raises(llmtrace.BudgetExceeded) as refused:
                    one_call()  # the open stream may yet cost `worst`
                list(stream)
            else:
                with client.messages.stream(model=model, messages=HI, max_tokens=max_tokens) as stream:
                    with pytest.raises(llmtrace.BudgetExceeded) as refused:
                        one_call()
                    list(stream.text_stream)
            one_call()  # the stream ended and cost far less than its reservation
    assert refused.value.spent_usd == pytest.approx(worst, rel=1e-3)  # and the short prompt's few tokens
    streamed = next(s for s in captured.spans() if s.attributes.get(A.REQUEST_MAX_TOKENS) == max_tokens)
    assert 0 < streamed.attributes[A.COST_USD] < 0.01 * worst
    assert len(api.requests) == 2


def test_processes_sharing_a_store_overspend_at_most_the_documented_bound(tmp_path: Path) -> None:
    """README, "Budgets": across processes the overspend is at most
    (budget_refresh_interval + flush_interval) x the call rate of all processes x the cost of a call."""
    cost = _cost_of_one_call()
    limit = 150 * cost
    db = str(tmp_path / "shared.duckdb")
    config = _config(tmp_path, f'scope = "global"\nperiod = "day"\nlimit_usd = {limit}\naction = "block"')
    workers = [
        subprocess.Popen([sys.executable, str(HERE / "budget_worker.py"), db, config, "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": ""})
        for _ in range(3)
    ]  # fmt: skip
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["refused"] for r in reports)  # each process stopped because the shared budget was spent
    calls = sum(r["calls"] for r in reports)
    rate = sum(r["calls"] / r["elapsed"] for r in reports)  # calls per second, all processes together
    spent = query.spent(query.TimeRange.last(timedelta(hours=1)), db=db)
    assert spent == pytest.approx(calls * cost)
    staleness = 0.5 + 0.5 + 1.0  # refresh + flush interval, + 1 s for a refresh's own flush and read on a busy machine
    assert limit - 3 * cost <= spent <= limit + rate * staleness * cost
    assert spent < 1.5 * limit  # without the shared figure each process would have spent the whole limit


def test_a_calendar_period_starts_over_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtrace import enforce

    clock = [datetime(2026, 11, 23, 23, 59)]
    monkeypatch.setattr(enforce, "utc_now", lambda: clock[0])
    monkeypatch.setattr(enforce, "_epoch_now", lambda: clock[0].replace(tzinfo=timezone.utc).timestamp())
    guard = enforce.SpendGuard([budgets.Budget("global", None, "day", 1.0, action="block")])
    hold = guard.admit({}, lambda: 0.0)
    assert isinstance(hold, enforce.Hold)
    guard.settle(hold, 1.5)
    refused = guard.admit({}, lambda: 0.0)
    assert isinstance(refused, llmtrace.BudgetExceeded) and refused.period_end == datetime(2026, 11, 24, tzinfo=timezone.utc)
    clock[0] = datetime(2026, 11, 24, 0, 0, 1)  # midnight UTC passed: a new day, nothing spent yet
    assert isinstance(guard.admit({}, lambda: 0.0), enforce.Hold)


def test_what_other_processes_spent_no_longer_counts_once_the_period_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtrace import enforce

    clock = [datetime(2026, 11, 23, 23, 59)]
    monkeypatch.setattr(enforce, "utc_now", lambda: clock[0])
    monkeypatch.setattr(enforce, "_epoch_now", lambda: clock[0].replace(tzinfo=timezone.utc).timestamp())
    each = budgets.Budget("tenant", "*", "day", 1.0, action="block")
    guard = enforce.SpendGuard([each])
    guard.refresh(guard.snapshot(), {each: {"acme": 1.5, "globex": 0.2}})  # the store: what other processes spent
    assert isinstance(guard.admit({A.TENANT: "acme"}, lambda: 0.0), llmtrace.BudgetExceeded)
    hold = guard.admit({A.TENANT: "globex"}, lambda: 0.0)
    assert isinstance(hold, enforce.Hold)
    guard.settle(hold, 0.1)
    clock[0] = datetime(2026, 11, 24, 0, 0, 1)  # a new day, before the store is read again
    assert isinstance(guard.admit({A.TENANT: "acme"}, lambda: 0.0), enforce.Hold)
    assert guard.snapshot().finished == {}  # yesterday's keys are forgotten: a "*" budget meets new ones every day




def test_a_period_that_ended_with_no_call_since_is_read_as_the_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor reads the store (and judges alerts) for the guard's windows: a process with no call for a key
    since midnight must not read yesterday's spend as today's (it fired a false warning)."""
    from llmtrace import enforce

    clock = [datetime(2026, 11, 23, 23, 34)]
    monkeypatch.setattr(enforce, "utc_now", lambda: clock[0])
    monkeypatch.setattr(enforce, "_epoch_now", lambda: clock[0].replace(tzinfo=timezone.utc).timestamp())
    acme = budgets.Budget("tenant", "acme", "day", 0.10, action="block")
    guard = enforce.SpendGuard([acme])
    hold = guard.admit({A.TENANT: "acme"}, lambda: 0.0)
    assert isinstance(hold, enforce.Hold)
    guard.settle(hold, 0.06)
    clock[0] = datetime(2026, 11, 24, 0, 0, 11)  # past midnight; no acme call in this process since
    snapshot = guard.snapshot()
    assert snapshot.windows[acme][0] == datetime(2026, 11, 24) and snapshot.finished == {}

def test_a_rolling_budget_keeps_counting_only_what_ended_since_the_stores_last_figure() -> None:
    """A rolling window never starts over: the per-key counts of this process must still not grow with every key
    it ever met (a "*" budget meets new users every day), and no spend may be lost or counted twice."""
    from llmtrace import enforce

    each = budgets.Budget("user", "*", "24h", 1.0, action="block")
    guard = enforce.SpendGuard([each])

    def spend(user: str, cost: float) -> None:
        hold = guard.admit({A.USER_ID: user}, lambda: 0.0)
        assert isinstance(hold, enforce.Hold)
        guard.settle(hold, cost)

    for n in range(1000):
        spend(f"user-{n}", 0.01)
    snapshot = guard.snapshot()
    spend("user-1", 0.5)  # ends after the snapshot: not in the store's figure
    guard.refresh(snapshot, {each: {f"user-{n}": 0.01 for n in range(1000)}})  # the store: what had ended by then
    assert guard.snapshot().finished == {(0, "user-1"): pytest.approx(0.5)}  # the rest is in the store's figure
    spend("user-1", 0.48)  # 0.01 + 0.5 + 0.48 = 0.99: still room
    spend("user-1", 0.02)
    assert isinstance(guard.admit({A.USER_ID: "user-1"}, lambda: 0.0), llmtrace.BudgetExceeded)
    assert isinstance(guard.admit({A.USER_ID: "user-2"}, lambda: 0.0), enforce.Hold)


@pytest.mark.parametrize("detectors", [[], ["duplicate_calls"]], ids=["own-serialization", "shared-with-the-hash"])
def test_a_call_in_flight_holds_its_prompts_cost_against_the_budget(tmp_path: Path, detectors: list[str]) -> None:
    """Calls sent at once near the limit: each one's prompt is known before it is sent, and is held (a long prompt
    with no max_tokens used to hold nothing, and 16 threads overspent a budget by 42-61 %). With the duplicate
    detector on, the prompt's size comes from the bytes its request hash was computed over."""
    config = _config(tmp_path, 'scope = "global"\nperiod = "day"\nlimit_usd = 0.02\naction = "block"')
    api = FakeAPI(http_module(openai))
    sent, release = threading.Event(), threading.Event()

    def slow(request: Any) -> Any:
        sent.set()
        release.wait(10)
        return api(request)

    long_prompt = [{"role": "user", "content": "word " * 6000}]  # 30 kB: ~10,000 tokens at gpt-4o's $2.50/M: $0.025
    in_flight = threading.Thread(
        target=lambda: openai_client(slow).chat.completions.create(model="gpt-4o", messages=long_prompt))
    with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), config_file=config,
                                  **{**NO_REFRESH, "anomaly_detectors": detectors}):
        in_flight.start()
        try:
            assert sent.wait(10)
            with pytest.raises(llmtrace.BudgetExceeded):
                openai_client(api).chat.completions.create(model="gpt-4o", messages=HI)
        finally:
            release.set()
            in_flight.join(10)
    assert len(api.requests) == 1  # the long prompt's call; the second one never left the process


def test_a_prompt_is_serialized_once_for_its_request_hash_and_its_budget_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmtrace import call

    messages = [{"role": "user", "content": "word " * 100}]
    serialized = []
    real = call._serialized
    monkeypatch.setattr(call, "_serialized", lambda content: serialized.append(content) or real(content))
    config = _config(tmp_path, 'scope = "global"\nperiod = "day"\nlimit_usd = 5\naction = "block"')
    with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), config_file=config,
                                  **{**NO_REFRESH, "anomaly_detectors": ["duplicate_calls"]}) as captured:
        openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o", messages=messages)
    assert len(captured.spans()[0].attributes[A.REQUEST_HASH]) == 16
    assert [content for content in serialized if content is messages] == [messages]


def test_stream_managers_and_async_clients_are_refused_too(tmp_path: Path) -> None:
    import asyncio

    budgets.add(scope="global", period="day", limit_usd=1e-9, action="block")  # spent by the first call
    api = FakeAPI(http_module(anthropic))
    client = anthropic_client(api)
    async_api = FakeAPI(http_module(openai), is_async=True)
    async_client = openai_client(async_api, is_async=True)
    with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), **NO_REFRESH):
        client.messages.create(model="claude-3-5-haiku-20241022", messages=HI, max_tokens=10)
        with pytest.raises(llmtrace.BudgetExceeded):
            with client.messages.stream(model="claude-3-5-haiku-20241022", messages=HI, max_tokens=10) as stream:
                list(stream.text_stream)
        with pytest.raises(llmtrace.BudgetExceeded):
            asyncio.run(async_client.chat.completions.create(model="gpt-4o-mini", messages=HI))
    assert len(api.requests) == 1 and async_api.requests == []


def test_a_forked_worker_keeps_reading_the_store_for_its_budgets(tmp_path: Path) -> None:
    """Prefork servers (gunicorn --preload, Celery's prefork pool) instrument in the parent, then fork the
    workers at once. A worker must neither hang on its first call (a lock the parent's llmtrace threads
    held at the fork, such as an import in progress) nor stop reading the store: a block budget would
    then count only that worker's own calls."""
    db = str(tmp_path / "spend.duckdb")
    budgets.add(scope="tenant", key="acme", period="day", limit_usd=1.0, action="block")
    client = openai_client(FakeAPI(http_module(openai)))
    with llmtrace.testing.capture(store=True, db=db, budget_refresh_interval=0.1, anomaly_detectors=[]):
        spent_elsewhere, first_call_done = os.pipe(), os.pipe()
        pid = os.fork()  # right after instrument(), as a prefork server does
        if pid == 0:  # the worker
            code = 3
            try:
                with llmtrace.tags(tenant="acme"):
                    client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # the budget has room
                    os.write(first_call_done[1], b"1")
                    os.read(spent_elsewhere[0], 1)  # another worker has spent the budget meanwhile
                    deadline = time.monotonic() + 15  # 150 refresh intervals: this worker's monitor reads it
                    code = 1  # still admitted at the deadline: this worker never saw the others' spend
                    while time.monotonic() < deadline:
                        try:
                            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
                        except llmtrace.BudgetExceeded:
                            code = 0
                            break
                        time.sleep(0.1)
            finally:
                os._exit(code)
        status = None
        try:
            ready, _, _ = select.select([first_call_done[0]], [], [], 30)
            assert ready, "the forked worker hung on its first LLM call"
            provider, writer = provider_with_store(db, flush_interval=60)
            emit(provider, 4, tenant="acme", cost=0.25)
            writer.shutdown()
            os.write(spent_elsewhere[1], b"1")
            _, status = os.waitpid(pid, 0)
        finally:
            if status is None:  # the worker hung: do not leave it behind
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    assert status is not None and os.waitstatus_to_exitcode(status) == 0


def test_a_stream_in_flight_holds_the_worst_case_of_the_service_tier_it_asked_for(tmp_path: Path) -> None:
    from llmtrace import pricing

    standard, priority = pricing.price_for("openai", "gpt-5"), pricing.price_for("openai", "gpt-5", context=(("service_tier", "priority"),))
    assert standard is not None and priority is not None
    max_tokens = 100_000
    worst = max_tokens * priority.worst_output_per_token()
    assert worst > 1.5 * max_tokens * standard.worst_output_per_token()  # gpt-5's priority rates are twice the standard
    budgets.add(scope="feature", key="chat", period="day", limit_usd=0.9 * worst, action="block")
    api = FakeAPI(http_module(openai))
    client = openai_client(api)
    with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), **NO_REFRESH), llmtrace.tags(feature="chat"):
        stream = client.chat.completions.create(model="gpt-5", messages=HI, max_tokens=max_tokens, stream=True,
                                                service_tier="priority")
        with pytest.raises(llmtrace.BudgetExceeded) as refused:
            client.chat.completions.create(model="gpt-5", messages=HI, max_tokens=10)  # the stream may yet cost `worst`
        list(stream)
    assert refused.value.spent_usd == pytest.approx(worst, rel=1e-3)  # and the short prompt's few tokens


def test_a_call_that_ends_while_the_budgets_are_read_counts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh snapshots what this process counted, flushes its spans, then reads the store: a call that ends in
    between is written by that flush and counted by this process since the snapshot. The store's figure leaves it out
    (calls that ended by the snapshot), or the budget refused calls well below its limit."""
    cost = _cost_of_one_call()
    budgets.add(scope="tenant", key="acme", period="day", limit_usd=2.5 * cost, action="block")
    client = openai_client(FakeAPI(http_module(openai)))

    def one_call() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), **NO_REFRESH), llmtrace.tags(tenant="acme"):
        one_call()
        monitor = instrumentation._monitor
        assert monitor is not None
        flush = monitor.writer.force_flush

        def a_call_ends_first(*args: Any, **kwargs: Any) -> bool:
            one_call()  # after the refresh's snapshot, before its flush
            return flush(*args, **kwargs)

        monkeypatch.setattr(monitor.writer, "force_flush", a_call_ends_first)
        monitor.refresh_budgets(monitor.budgets)
        monkeypatch.setattr(monitor.writer, "force_flush", flush)
        one_call()  # two calls spent, 2 x cost of 2.5 x cost: admitted
        with pytest.raises(llmtrace.BudgetExceeded) as refused:
            one_call()
    assert refused.value.spent_usd == pytest.approx(3 * cost)


def test_a_block_budget_spent_in_calls_whose_float_sum_falls_short_by_a_bit_refuses(tmp_path: Path) -> None:
    db = str(tmp_path / "s.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 10, tenant="acme", cost=0.1)  # $1.00, which the store sums to 0.9999999999999999
    writer.shutdown()
    budgets.add(scope="tenant", key="acme", period="day", limit_usd=1.0, action="block")
    api = FakeAPI(http_module(openai))
    with llmtrace.testing.capture(store=True, db=db, **NO_REFRESH), llmtrace.tags(tenant="acme"):
        with pytest.raises(llmtrace.BudgetExceeded):
            openai_client(api).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert api.requests == []
