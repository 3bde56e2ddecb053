"""Anomaly detectors: each fires on crafted traffic in a real store, and stays silent on the traffic the
demo sends through the real SDKs to the simulated provider."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import openai
import pytest

import llmtrace
import llmtrace.testing
from conftest import http_module, openai_client, run_demo
from fake_api import FakeAPI
from llmtrace import anomalies, config, query
from llmtrace.alerts import Alert, Alerter
from llmtrace.monitor import Monitor
from llmtrace.store.files import StorePaths
from llmtrace import attributes as A
from store_helpers import emit_at, provider_with_store

NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
HOUR = timedelta(hours=1)


def _settings(**overrides: Any) -> config.Settings:
    return config.load(overrides, environ={})


def _store(tmp_path: Path, calls: list[tuple[datetime, dict[str, Any]]]) -> str:
    db = str(tmp_path / "anomalies.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    for start, attributes in calls:
        emit_at(provider, start, **attributes)
    writer.shutdown()
    return db


def _spread(start: datetime, end: datetime, count: int, **attributes: Any) -> list[tuple[datetime, dict[str, Any]]]:
    step = (end - start) / count
    return [(start + i * step, attributes) for i in range(count)]


def test_spend_spike_fires_for_the_tenant_and_feature_that_spiked(tmp_path: Path) -> None:
    calls = []
    for hours_ago in range(2, 8):  # usual: $0.30 an hour for acme/search, $0.30 for globex/chat
        start = NOW - hours_ago * HOUR
        calls += _spread(start, start + HOUR, 30, **{A.COST_USD: 0.01})
        calls += _spread(start, start + HOUR, 30, **{A.COST_USD: 0.01, A.TENANT: "globex", A.FEATURE: "chat"})
    calls += _spread(NOW - HOUR, NOW, 40, **{A.COST_USD: 0.05})  # acme/search: $2.00 this hour
    calls += _spread(NOW - HOUR, NOW, 30, **{A.COST_USD: 0.011, A.TENANT: "globex", A.FEATURE: "chat"})
    alerts = anomalies.spend_spikes(_settings(), _store(tmp_path, calls), NOW)
    assert sorted(a.subject for a in alerts) == ["feature=search", "tenant=acme"]
    acme = next(a for a in alerts if a.subject == "tenant=acme")
    assert acme.details["spent_usd"] == pytest.approx(2.0) and acme.details["usual_usd"] == pytest.approx(0.3)
    assert acme.message == "Spend spike: tenant acme spent $2.00 in the last hour, 6.7x its usual $0.30"


def test_prompt_growth_fires_for_the_feature_whose_prompts_grew(tmp_path: Path) -> None:
    calls = _spread(NOW - 3 * HOUR, NOW - HOUR, 30, **{A.USAGE_INPUT_TOKENS: 1000})
    calls += _spread(NOW - 3 * HOUR, NOW - HOUR, 30, **{A.USAGE_INPUT_TOKENS: 500, A.FEATURE: "chat"})
    calls += _spread(NOW - HOUR, NOW, 30, **{A.USAGE_INPUT_TOKENS: 3000})  # a refactor added 2,000 tokens
    calls += _spread(NOW - HOUR, NOW, 30, **{A.USAGE_INPUT_TOKENS: 550, A.FEATURE: "chat"})  # +10%: normal
    alerts = anomalies.prompt_growth(_settings(), _store(tmp_path, calls), NOW)
    assert [a.subject for a in alerts] == ["feature=search"]
    assert alerts[0].message == (
        "Prompt growth: feature search now sends a median 3,000 input tokens a call, up 200% from 1,000"
    )


def test_duplicate_calls_are_found_by_a_hash_that_never_holds_the_text(tmp_path: Path) -> None:
    db = str(tmp_path / "dup.duckdb")
    client = openai_client(FakeAPI(http_module(openai)))
    secret = "the customer's account number is 12345"
    with llmtrace.testing.capture(store=True, db=db, budget_refresh_interval=3600, anomaly_detectors=["duplicate_calls"]):
        with llmtrace.tags(tenant="acme", feature="checkout"):
            for _ in range(2):  # a bug sends the request twice
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": secret}])
        with llmtrace.tags(tenant="acme", feature="search"):
            for i in range(5):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}])
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "q0"}])  # another model
        for _ in range(3):  # untagged
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}])
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    alerts = {a.subject: a for a in anomalies.duplicate_calls(_settings(), db, now)}
    assert set(alerts) == {"tenant=acme feature=checkout", "tenant=None feature=None"}
    assert alerts["tenant=acme feature=checkout"].details["most_repeats"] == 2
    assert alerts["tenant=acme feature=checkout"].message.startswith("Duplicate calls: tenant acme, feature checkout sent 1 ")
    assert alerts["tenant=None feature=None"].message.startswith("Duplicate calls: calls with no tenant or feature sent 1 ")
    with query.open_store(db) as con:
        hashes = con.execute("SELECT DISTINCT request_hash FROM spans").fetchall()
        stored = con.execute("SELECT * FROM spans").fetchall()
    assert len(hashes) == 8 and all(len(h[0]) == 16 for h in hashes)  # 11 calls: one sent twice, one three times
    assert secret not in repr(stored) and "12345" not in repr(stored)
    assert (Path(db + ".key").stat().st_mode & 0o777) == 0o600


def test_equal_requests_hash_alike_however_they_were_built(tmp_path: Path) -> None:
    """The hash compares content, not how the app built its objects; an SDK object in the messages hashes too."""
    client = openai_client(FakeAPI(http_module(openai)))
    question = "what is my balance?"
    built = "".join(["what is ", "my balance?"])  # equal to `question`, another object, not interned
    previous = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    requests = [
        [{"role": "user", "content": question}, {"role": "user", "content": question}],  # one object twice
        [{"role": "user", "content": built}, {"role": "user", "content": question}],
        [{"role": "user", "content": question}, {"role": "user", "content": "what is my balance"}],  # differs
        [{"role": "user", "content": question}, previous.choices[0].message],  # an SDK model: hashed by its repr
        [{"role": "user", "content": question}, previous.choices[0].message],
    ]
    with llmtrace.testing.capture(store=True, db=str(tmp_path / "h.duckdb"), budget_refresh_interval=3600,
                                  anomaly_detectors=["duplicate_calls"]) as captured:
        for messages in requests:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    hashes = [span.attributes[A.REQUEST_HASH] for span in captured.spans()]
    assert hashes[0] == hashes[1] and hashes[3] == hashes[4]
    assert len({hashes[0], hashes[2], hashes[3]}) == 3


def test_model_drift_and_unpinned_models(tmp_path: Path) -> None:
    dated = {A.REQUEST_MODEL: "gpt-4o", A.RESPONSE_MODEL: "gpt-4o-2024-08-06"}
    calls = _spread(NOW - 3 * HOUR, NOW - HOUR, 30, **dated)
    calls += _spread(NOW - HOUR, NOW, 5, **dated)
    calls += _spread(NOW - HOUR, NOW, 5, **{A.REQUEST_MODEL: "gpt-4o", A.RESPONSE_MODEL: "gpt-4o-2024-11-20"})
    calls += _spread(NOW - 3 * HOUR, NOW, 40, **{A.PROVIDER_NAME: "anthropic", A.REQUEST_MODEL: "claude-3-5-haiku-20241022",
                                                 A.RESPONSE_MODEL: "claude-3-5-haiku-20241022"})  # fmt: skip
    db = _store(tmp_path, calls)
    alerts = anomalies.model_drift(_settings(), db, NOW)
    assert [a.message for a in alerts] == [
        "Model drift: openai now answers gpt-4o with gpt-4o-2024-11-20 (before: gpt-4o-2024-08-06)"
    ]
    pinned = anomalies.model_drift(_settings(anomaly_require_pinned_models=True), db, NOW)
    assert sorted(a.kind for a in pinned) == ["model_drift", "unpinned_model"]
    assert next(a for a in pinned if a.kind == "unpinned_model").subject == "model=gpt-4o"


@pytest.mark.parametrize(
    ("model", "pinned"),
    [("gpt-4o", False), ("gpt-4o-2024-08-06", True), ("claude-3-5-sonnet-20241022", True), ("gpt-4-0613", True),
     ("claude-sonnet-4-5", False), ("claude-3-5-sonnet-latest", False), ("gemini-1.5-pro-002", True),
     ("o3-mini", False), ("claude-opus-4-1@20250805", True), ("gpt-4-1106-preview", True), ("mistral-large-2411", True),
     ("command-r-08-2024", True), ("mixtral-8x7b-32768", False)],
)  # fmt: skip
def test_which_model_names_are_pinned(model: str, pinned: bool) -> None:
    assert anomalies.is_pinned(model) is pinned


def test_error_and_rate_limit_rates(tmp_path: Path) -> None:
    recent = (NOW - timedelta(minutes=14), NOW)
    calls = _spread(*recent, 20, **{A.PROVIDER_NAME: "openai"})
    calls += _spread(*recent, 10, **{A.PROVIDER_NAME: "openai", A.ERROR_TYPE: "InternalServerError", A.HTTP_STATUS_CODE: 500})
    calls += _spread(*recent, 20, **{A.PROVIDER_NAME: "anthropic"})
    calls += _spread(*recent, 10, **{A.PROVIDER_NAME: "anthropic", A.HTTP_RATE_LIMITED: 1, A.HTTP_ATTEMPTS: 2})
    calls += _spread(*recent, 30, **{A.PROVIDER_NAME: "mistral"})
    calls += _spread(*recent, 30, **{A.PROVIDER_NAME: "mistral", A.ERROR_TYPE: "BudgetExceeded"})  # the app's own limit
    calls += _spread(NOW - 3 * HOUR, NOW - 2 * HOUR, 30, **{A.PROVIDER_NAME: "mistral", A.ERROR_TYPE: "APIError"})  # long ago
    alerts = anomalies.failure_rates(_settings(), _store(tmp_path, calls), NOW)
    assert sorted((a.kind, a.subject) for a in alerts) == [("error_rate", "provider=openai"),
                                                            ("rate_limit_rate", "provider=anthropic")]  # fmt: skip
    assert next(a for a in alerts if a.kind == "error_rate").message == (
        "Error rate: 33.3% of 30 calls to openai failed in the last 15 minutes (threshold 10%)"
    )


def test_detectors_stay_silent_on_the_demos_traffic(tmp_path: Path) -> None:
    """600 demo calls (real SDKs, simulated provider: 4% 429s, 1% 5xx per attempt, SDK retries) split in
    time: the last third of the run is "recent", the two thirds before it the baseline; thresholds and minimums at
    their defaults (but for the spike's $1 floor, which a run of seconds never reaches)."""
    demo_db = run_demo(str(tmp_path / "demo.duckdb"), 600, seed=5)
    extent = query.summary(query.TimeRange.last(timedelta(hours=1)), db=demo_db)
    first, last = extent["first_call"], extent["last_call"]
    run = (last - first).total_seconds()
    settings = _settings(
        anomaly_recent_window=run / 3, anomaly_baseline_window=2 * run / 3, anomaly_rate_window=run,
        anomaly_spend_spike_min_usd=1e-9,
    )  # fmt: skip
    now = last + timedelta(microseconds=1)
    recent, baseline = anomalies._windows(settings, now)
    # Enough traffic that the detectors compare something, or the test would prove nothing:
    spend = query.spend_rates("tenant", recent, baseline, run / 3, db=demo_db)
    assert sum(row["recent_calls"] >= 20 and row["baseline_buckets"] >= 2 for row in spend) >= 3
    prompts = query.input_token_medians("feature", recent, baseline, db=demo_db)
    assert sum(min(row["recent_calls"], row["baseline_calls"]) >= 20 for row in prompts) >= 3
    opened: list[str] = []
    build_view = query._create_view
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(query, "_create_view", lambda con, paths, wait: (opened.append(str(paths.db)), build_view(con, paths, wait))[1])
        assert anomalies.detect(settings, demo_db, now) == []
    assert opened == [demo_db]  # every detector read one snapshot
    fired = query.alert_history(query.TimeRange.last(timedelta(hours=1)), db=demo_db)
    assert fired == []  # nor did the demo process's own monitor, at the default settings


def test_one_process_per_interval_runs_the_detectors_for_the_whole_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "shared.duckdb")
    runs: list[str] = []
    monkeypatch.setattr(anomalies, "detect", lambda settings, db, now: runs.append(db) or [])
    settings = _settings(anomaly_interval=1.0)
    writers = [provider_with_store(db, flush_interval=60)[1] for _ in range(2)]  # two processes' worth
    first, second = (Monitor(settings, writer, Alerter(writer.paths), []) for writer in writers)
    try:
        first.run_once()
        second.run_once()  # the same interval: the first one's run served the store
        assert len(runs) == 1
        time.sleep(1.1)
        second.run_once()  # a new interval: whichever process comes first runs them
        first.run_once()
        assert len(runs) == 2
        # No stamp can be read or written (its folder is gone; a permission test would pass as root):
        # every process runs them, as if alone.
        monkeypatch.setattr(StorePaths, "anomaly_stamp", property(lambda paths: tmp_path / "gone" / "stamp"))
        time.sleep(1.1)
        first.run_once()
        second.run_once()
        assert len(runs) == 4
    finally:
        for writer in writers:
            writer.shutdown()


def test_a_round_whose_detectors_fail_is_left_to_the_next_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "shared.duckdb")
    runs: list[str] = []

    def detect(settings: config.Settings, db: str, now: datetime) -> list[Alert]:
        runs.append(db)
        if len(runs) == 1:
            raise duckdb.IOException("Could not set lock on file: Conflicting lock is held")
        return []

    monkeypatch.setattr(anomalies, "detect", detect)
    writers = [provider_with_store(db, flush_interval=60)[1] for _ in range(2)]
    first, second = (Monitor(_settings(anomaly_interval=60.0), writer, Alerter(writer.paths), []) for writer in writers)
    try:
        with pytest.raises(duckdb.IOException):
            first.run_once()
        second.run_once()  # the same interval, but the first process could not do it
        assert len(runs) == 2
        first._next_anomaly_run = 0.0  # due again in this process too: the second one's run served the store
        first.run_once()
        assert len(runs) == 2
    finally:
        for writer in writers:
            writer.shutdown()


def test_a_round_with_nothing_to_read_does_not_say_the_store_works_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With no budgets, only the detectors read the store, once an interval: the rounds between say nothing of it."""
    calls: list[int] = []

    def detect(settings: config.Settings, db: str, now: datetime) -> list[Alert]:
        calls.append(1)
        raise duckdb.IOException("Could not set lock on file: Conflicting lock is held")

    monkeypatch.setattr(anomalies, "detect", detect)
    writer = provider_with_store(str(tmp_path / "s.duckdb"), flush_interval=60)[1]
    monitor = Monitor(_settings(anomaly_interval=60.0), writer, Alerter(writer.paths), [])
    try:
        with caplog.at_level(logging.WARNING, logger="llmtrace"):
            monitor._round()  # the detectors meet the lock
            monitor._round()  # not due again for a minute: nothing read
    finally:
        writer.shutdown()
    assert calls == [1] and "cannot use the store" in caplog.text and "work again" not in caplog.text


def _spike(tmp_path: Path, end: datetime) -> str:
    """acme's usual $0.30 an hour for six hours, then a $2.00 burst in the 8 minutes before ``end``."""
    calls = []
    for hours_ago in range(2, 8):
        start = end - hours_ago * HOUR
        calls += _spread(start, start + HOUR, 30, **{A.COST_USD: 0.01})
    calls += _spread(end - timedelta(minutes=8), end, 40, **{A.COST_USD: 0.05})
    return _store(tmp_path, calls)


def test_an_incident_alerts_once_though_the_clock_moves_into_the_next_slot(tmp_path: Path) -> None:
    """The detectors look back over a sliding window: a burst still in it after the hour turns must not alert again
    (the alert id's slot changed), in this process or another, until the window has passed."""
    turn = NOW.replace(minute=0, second=0) + HOUR  # an hour's start: a new slot of the alert ids
    db = _spike(tmp_path, turn - timedelta(minutes=1))
    alerter = Alerter(StorePaths(Path(db)))
    settings = _settings(anomaly_detectors=["spend_spike"])
    first = anomalies.detect(settings, db, turn - timedelta(seconds=30))
    assert sorted(a.subject for a in first) == ["feature=search", "tenant=acme"]
    alerter.fire(first)
    assert anomalies.detect(settings, db, turn + timedelta(seconds=90)) == []  # the same burst, the next slot
    later = anomalies.detect(settings, db, turn + timedelta(minutes=59))  # still in the window: quiet
    assert later == []


def test_alert_slots_are_the_same_in_every_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes of one fleet in different zones must give one situation one id (the store's dedupe)."""
    now = datetime(2026, 12, 8, 10, 45)  # naive UTC, as the store keeps time
    slots = []
    for zone in ("UTC", "Asia/Kolkata", "America/New_York"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        slots.append(anomalies._slot(now, 3600))
    monkeypatch.undo()
    time.tzset()
    assert slots == [int(now.replace(tzinfo=timezone.utc).timestamp() // 3600)] * 3


def test_no_spike_against_a_baseline_of_unknown_cost_or_of_a_few_test_calls(tmp_path: Path) -> None:
    calls = []
    for hours_ago in range(2, 8):  # unpriced all week (a model added to the price list since, say)
        start = NOW - hours_ago * HOUR
        calls += _spread(start, start + HOUR, 30, **{A.TENANT: "selfhosted", A.COST_USD: None, A.COST_UNPRICED: True})
    calls += _spread(NOW - 3 * HOUR, NOW - 2 * HOUR, 2, **{A.TENANT: "newco", A.COST_USD: 0.005})  # two test calls
    calls += _spread(NOW - HOUR, NOW, 30, **{A.TENANT: "selfhosted", A.COST_USD: 0.1})
    calls += _spread(NOW - HOUR, NOW, 50, **{A.TENANT: "newco", A.COST_USD: 0.1})  # its go-live
    subjects = {a.subject for a in anomalies.spend_spikes(_settings(), _store(tmp_path, calls), NOW)}
    assert not subjects & {"tenant=selfhosted", "tenant=newco"}


def test_a_nightly_batch_is_compared_with_the_nights_before_not_with_the_days_trickle(tmp_path: Path) -> None:
    calls = []
    for days_ago in range(1, 7):
        night = NOW - days_ago * timedelta(days=1)
        calls += _spread(night - HOUR, night, 40, **{A.TENANT: "batch", A.COST_USD: 0.5})  # $20 a night
        for hours in range(2, 23):  # a health check every hour of the day
            calls.append((night - hours * HOUR, {A.TENANT: "batch", A.COST_USD: 0.0001}))
    tonight = _spread(NOW - HOUR, NOW, 40, **{A.TENANT: "batch", A.COST_USD: 0.5})
    db = _store(tmp_path, calls + tonight)
    assert anomalies.spend_spikes(_settings(), db, NOW) == []  # $20, as every night
    runaway = _spread(NOW - HOUR, NOW, 40, **{A.TENANT: "batch", A.COST_USD: 5.0})  # $200: ten times the usual night
    alerts = anomalies.spend_spikes(_settings(), _store(tmp_path / "runaway", calls + runaway), NOW)
    assert [a.message for a in alerts if a.subject == "tenant=batch"] == [
        "Spend spike: tenant batch spent $200.00 in the last hour, 10.0x its usual $20.00"]


def test_thresholds_are_reached_by_sums_that_fall_short_in_floats(tmp_path: Path) -> None:
    calls = []
    for hours_ago in range(2, 8):
        start = NOW - hours_ago * HOUR
        calls += _spread(start, start + HOUR, 20, **{A.COST_USD: 0.005, A.USAGE_INPUT_TOKENS: 100})
    calls += _spread(NOW - HOUR, NOW, 10, **{A.COST_USD: 0.1, A.USAGE_INPUT_TOKENS: 110})  # $1.00, as a float 0.99999...
    calls += _spread(NOW - HOUR, NOW, 10, **{A.COST_USD: 0.0, A.USAGE_INPUT_TOKENS: 110})
    db = _store(tmp_path, calls)
    settings = _settings(anomaly_spend_spike_min_usd=1.0, anomaly_prompt_growth=0.1)  # 100 tokens * 1.1 = 110.00000000000001
    assert {a.subject for a in anomalies.spend_spikes(settings, db, NOW)} == {"tenant=acme", "feature=search"}
    assert [a.subject for a in anomalies.prompt_growth(settings, db, NOW)] == ["feature=search"]


def test_rates_read_as_percentages_with_their_digits_and_alerts_are_strict_json(tmp_path: Path) -> None:
    import json

    assert anomalies._percent(0.001) == "0.1%" and anomalies._percent(1 / 3) == "33.3%" and anomalies._percent(0.2) == "20%"
    alert = Alert("x", "spend_spike", "tenant=a", "m", {"ratio": float("inf"), "nested": [float("nan"), 1.5]})
    body = json.dumps(alert.payload(), allow_nan=False)  # what strict parsers (JavaScript, Go, Slack) accept
    assert json.loads(body)["alert"]["details"] == {"ratio": None, "nested": [None, 1.5]}


@pytest.mark.parametrize(("name", "value", "says"), [
    ("anomaly_error_rate", "10", r"must be a share from 0 to 1 \(0.1 is 10 %\)"),
    ("anomaly_rate_limit_rate", "1.5", "must be a share from 0 to 1"),
    ("anomaly_duplicate_count", "1", "must be a whole number 2 or more"),
    ("anomaly_recent_window", "1e12", "must be a number of seconds, at most a year"),
    ("anomaly_spend_spike_factor", "0.5", "must be a factor above 1"),
])  # fmt: skip
def test_thresholds_that_could_never_fire_or_would_fire_on_everything_are_refused(name: str, value: str, says: str) -> None:
    with pytest.raises(config.ConfigError, match=says):
        config.load({}, environ={f"LLMTRACE_{name.upper()}": value})


def test_processes_due_at_the_same_moment_claim_one_round(tmp_path: Path) -> None:
    import threading

    from llmtrace.store.files import claim_round

    for trial in range(20):
        stamp = tmp_path / f"stamp{trial}"
        start, won = threading.Barrier(6), []

        def claim(stamp: Path = stamp, start: threading.Barrier = start, won: list[bool] = won) -> None:
            start.wait()
            won.append(claim_round(stamp, 60))

        threads = [threading.Thread(target=claim) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert won.count(True) == 1, trial
