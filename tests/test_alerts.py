"""Alerts: budget thresholds fire once per budget, key and period across processes, through the logger,
a webhook (a real HTTP server on loopback) and callbacks; the store, the CLI and the dashboard show them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

import llmtrace
import llmtrace.testing
from conftest import http_module, openai_client
from fake_api import FakeAPI
from llmtrace import alerts, budgets, query
from llmtrace.cli import main
from store_helpers import emit, provider_with_store
from test_budgets import open_budgets_page

HERE = Path(__file__).parent


class Receiver:
    """A webhook receiver on loopback: records each POST's JSON; can fail or hang on demand."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = 0  # answer 500 to this many requests
        self.status = 200
        self.location = ""  # sent as the Location header when set
        self.hang = threading.Event()  # when set, requests wait for `release`
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.hang.is_set():
                    receiver.release.wait(10)
                receiver.bodies.append(body)
                status = receiver.status
                if receiver.fail_first:
                    receiver.fail_first -= 1
                    status = 500
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> list[str]:
        return sorted(body["alert"]["kind"] for body in self.bodies)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.release.set()
    r.server.shutdown()


def _store_with_spend(tmp_path: Path, dollars: float, tenant: str = "acme") -> str:
    db = str(tmp_path / "alerts.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 4, tenant=tenant, cost=dollars / 4)
    writer.shutdown()
    return db


CONFIG = """
[[budgets]]
scope = "tenant"
key = "acme"
period = "day"
limit_usd = 1.2
warn_at = 0.8

[[budgets]]
scope = "global"
period = "month"
limit_usd = 0.5

[alerts]
webhook_url = "{url}"
"""


def test_budget_alerts_fire_once_across_processes(tmp_path: Path, receiver: Receiver) -> None:
    db = _store_with_spend(tmp_path, 1.0)  # acme: $1.00 of $1.20 (past 80%); everyone: $1.00 of $0.50
    config = tmp_path / "llmtrace.toml"
    config.write_text(CONFIG.format(url=receiver.url))
    app = ("import time, llmtrace; llmtrace.instrument(budget_refresh_interval=0.1, anomaly_detectors=[]); "
           "time.sleep(1.5); llmtrace.uninstrument()")  # fmt: skip
    env = {**os.environ, "LLMTRACE_DB": db, "LLMTRACE_CONFIG": str(config), "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    processes = [subprocess.Popen([sys.executable, "-c", app], env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for process in processes:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    # Three processes evaluated the same budgets about fifteen times each: each alert went out once. The global budget,
    # first seen past its limit, sent its exceeded alert alone.
    assert receiver.kinds() == ["budget_exceeded", "budget_warning"]
    texts = sorted(body["text"] for body in receiver.bodies)
    assert texts[0].startswith("llmtrace: Budget exceeded: global spent $1.00 of $0.50 this month (200%")
    assert texts[1] == "llmtrace: Budget warning: tenant=acme spent $1.00 of $1.20 this day (83%, warning at 80%)"
    acme = next(b["alert"] for b in receiver.bodies if b["alert"]["subject"] == "tenant=acme")
    assert acme["details"]["spent_usd"] == pytest.approx(1.0) and acme["details"]["limit_usd"] == 1.2
    history = query.alert_history(query.TimeRange.last(timedelta(hours=1)), db=db)
    assert sorted(row["kind"] for row in history) == receiver.kinds()



def test_a_short_script_that_spends_past_a_budget_alerts_before_it_exits(tmp_path: Path, receiver: Receiver) -> None:
    config = tmp_path / "llmtrace.toml"
    config.write_text(f"""
[[budgets]]
scope = "tenant"
key = "acme"
period = "day"
limit_usd = 0.000001

[alerts]
webhook_url = "{receiver.url}"
""")
    app = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import llmtrace, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI

llmtrace.instrument(budget_refresh_interval=600, anomaly_detectors=[])  # no round of the monitor's own before exit
with llmtrace.tags(tenant="acme"):
    openai_client(FakeAPI(http_module(openai))).chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
"""
    env = {**os.environ, "LLMTRACE_DB": str(tmp_path / "s.duckdb"), "LLMTRACE_CONFIG": str(config), "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    done = subprocess.run([sys.executable, "-c", app], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert receiver.kinds() == ["budget_exceeded"]

def test_logger_and_callbacks_get_each_alert_and_a_failing_callback_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = _store_with_spend(tmp_path, 1.0)
    received: list[alerts.Alert] = []

    def broken(alert: alerts.Alert) -> None:
        raise RuntimeError("the app's callback is broken")

    alerts.on_alert(broken)
    alerts.on_alert(received.append)
    budgets.add(scope="tenant", key="*", period="day", limit_usd=0.9)
    try:
        # The first budget read happens inside instrument(): acme's alerts fire there.
        with llmtrace.testing.capture(store=True, db=db, budget_refresh_interval=3600, anomaly_detectors=[]):
            pass
    finally:
        alerts.remove_callback(broken)
        alerts.remove_callback(received.append)
        budgets.clear()
    assert [a.kind for a in received] == ["budget_exceeded"]
    assert received[0].subject == "tenant=acme" and received[0].details["spent_usd"] == pytest.approx(1.0)
    logged = [r.getMessage() for r in caplog.records]
    assert "llmtrace alert: Budget exceeded: tenant=* (acme) spent $1.00 of $0.90 this day (111%; alert only)" in logged
    assert any("the app's callback is broken" in line for line in logged)


def test_a_failing_webhook_is_retried_then_given_up_on(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    alert = alerts.Alert("test:1", "budget_warning", "global", "a test alert")
    receiver.fail_first = 2
    hook = alerts.Webhook(receiver.url, timeout=5, attempts=3, backoff=0.01)
    hook.send(alert)
    assert hook.join()
    assert len(receiver.bodies) == 3 and hook.failed == 0  # 500, 500, then 200
    assert receiver.bodies[0] == {"text": "llmtrace: a test alert", "alert": receiver.bodies[0]["alert"]}

    receiver.status = 404  # refused: not retried
    hook.send(alert)
    assert hook.join()
    assert len(receiver.bodies) == 4 and hook.failed == 1
    receiver.hang.set()  # a POST in flight: join says so when its timeout ends, and waits it out otherwise
    hook.send(alert)
    assert not hook.join(timeout=0.2)
    receiver.release.set()
    assert hook.join()
    assert len(receiver.bodies) == 5
    unreachable = alerts.Webhook("http://127.0.0.1:9/nothing-listens", timeout=1, attempts=2, backoff=0.01)
    unreachable.send(alert)
    assert unreachable.join()
    assert unreachable.failed == 1
    assert any("gave up" in r.getMessage() and "127.0.0.1:9" in r.getMessage() for r in caplog.records)


def test_a_hanging_webhook_never_holds_up_the_app(tmp_path: Path, receiver: Receiver) -> None:
    db = _store_with_spend(tmp_path, 1.0)
    receiver.hang.set()
    api = FakeAPI(http_module(openai))
    client = openai_client(api)
    budgets.add(scope="global", period="day", limit_usd=0.5)
    try:
        with llmtrace.testing.capture(store=True, db=db, alert_webhook_url=receiver.url, alert_webhook_timeout=10,
                                      budget_refresh_interval=3600, anomaly_detectors=[]):  # fmt: skip
            for _ in range(5):  # the alerts' POST is stuck on the receiver meanwhile
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert len(api.requests) == 5 and receiver.bodies == []
            receiver.release.set()
    finally:
        budgets.clear()
    assert receiver.kinds() == ["budget_exceeded"]  # delivered before uninstrument() returned


def test_alerts_a_hanging_webhook_never_took_are_counted_in_the_log_at_exit(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    db = _store_with_spend(tmp_path, 1.0)
    receiver.hang.set()
    budgets.add(scope="global", period="day", limit_usd=0.5)
    try:
        with llmtrace.testing.capture(store=True, db=db, alert_webhook_url=receiver.url, alert_webhook_timeout=0.5,
                                      budget_refresh_interval=3600, anomaly_detectors=[]):  # fmt: skip
            pass  # the first budget read fires an exceeded alert; the receiver does not take it in time
    finally:
        budgets.clear()
        receiver.release.set()
    assert any("1 alert(s) not sent to webhook" in r.getMessage() for r in caplog.records), caplog.text


def test_budgets_command_and_dashboard_show_alert_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _store_with_spend(tmp_path, 1.0)
    config = tmp_path / "llmtrace.toml"
    config.write_text(CONFIG.format(url="http://127.0.0.1:9/unused").replace("[alerts]\nwebhook_url", "[alerts]\n# webhook_url"))
    with llmtrace.testing.capture(store=True, db=db, config_file=str(config), budget_refresh_interval=3600,
                                  anomaly_detectors=[]):  # fmt: skip
        pass
    assert main(["budgets", "--config", str(config), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "Alerts (last 7 days)" in out
    assert "Budget exceeded: global spent $1.00 of $0.50 this month" in out

    history = open_budgets_page(monkeypatch, db, config).dataframe[1].value
    assert sorted(history["kind"]) == ["budget_exceeded", "budget_warning"]
    assert any("Budget exceeded: global" in message for message in history["message"])


def test_a_broken_store_is_reported_once_and_the_app_carries_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "broken.duckdb"
    db.write_bytes(b"this is not a DuckDB file" * 100)
    api = FakeAPI(http_module(openai))
    client = openai_client(api)
    budgets.add(scope="global", period="day", limit_usd=1.0, action="block")
    try:
        with llmtrace.testing.capture(store=True, db=str(db), budget_refresh_interval=0.05, flush_interval=0.05):
            for _ in range(100):  # enough rounds for a storm of repeated log lines to show
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                time.sleep(0.02)
    finally:
        budgets.clear()
    assert len(api.requests) == 100
    faults = [r for r in caplog.records if "budgets and alerts cannot use the store" in r.getMessage()]
    assert len(faults) == 1 and str(db) in faults[0].getMessage()
    # A block budget that could not read the spend so far says what that means for it, once.
    assert len([r for r in caplog.records if "count only this process's calls" in r.getMessage()]) == 1
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == len(set(logged)), logged  # each fault once, not once per round


def test_a_slow_callback_holds_up_neither_instrument_nor_the_budgets_reads(tmp_path: Path) -> None:
    """Callbacks have a thread of their own: one blocked on a pager that does not answer leaves the monitor reading
    the store (what other processes spent still reaches block budgets) and instrument() returning."""
    db = _store_with_spend(tmp_path, 1.0)
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()
    received: list[tuple[str, str]] = []

    def slow(alert: alerts.Alert) -> None:
        received.append((alert.kind, threading.current_thread().name))
        entered.set()
        release.wait(30)
        returned.set()

    alerts.on_alert(slow)
    budgets.add(scope="global", period="day", limit_usd=0.9)
    try:
        with llmtrace.testing.capture(store=True, db=db, budget_refresh_interval=3600, anomaly_detectors=[]):
            assert entered.wait(20)  # the alert instrument()'s first read fired is with the callback
            assert not returned.is_set()  # instrument() returned while the callback still runs
            reading = threading.Thread(target=llmtrace.instrumentation._monitor.run_once, kwargs={"anomalies": False})
            reading.start()
            reading.join(20)
            assert not reading.is_alive() and not returned.is_set()  # a round of the monitor's went on meanwhile
            release.set()
    finally:
        release.set()
        alerts.remove_callback(slow)
        budgets.clear()
    assert returned.is_set() and received == [("budget_exceeded", "llmtrace-alerts")]


def test_a_webhook_that_redirects_is_a_failure_the_log_names_not_a_silent_get(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """urllib would follow a 301/302 with a GET without the alert: the receiver's 200 to that would pass for delivery."""
    receiver.status, receiver.location = 302, "https://hooks.example.com/moved"
    hook = alerts.Webhook(receiver.url, timeout=5, attempts=3, backoff=0.01)
    hook.send(alerts.Alert("test:redirect", "budget_warning", "global", "a test alert"))
    assert hook.join()
    assert len(receiver.bodies) == 1 and hook.failed == 1  # one POST, not retried, given up on
    logged = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert any("HTTP 302, a redirect to https://hooks.example.com/…" in line for line in logged), logged


def test_the_webhooks_path_which_holds_its_secret_never_reaches_the_log(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = receiver.url.replace("/hook", "/services/T0AAAAAAA/B0BBBBBBB/XyZsecretTOKEN")
    receiver.status = 500
    hook = alerts.Webhook(secret_url, timeout=5, attempts=1)
    hook.send(alerts.Alert("test:secret", "budget_warning", "global", "a test alert"))
    assert hook.join() and hook.failed == 1
    host = secret_url.split("/services")[0]
    assert any(f"webhook {host}/… failed" in r.getMessage() for r in caplog.records), caplog.text
    assert "XyZsecretTOKEN" not in caplog.text
    # Nor the error refusing one given without its scheme (a message an app may log).
    from llmtrace import config

    with pytest.raises(llmtrace.ConfigError) as refused:
        config.load({}, {"LLMTRACE_ALERT_WEBHOOK_URL": "hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/XyZsecretTOKEN"})
    assert str(refused.value) == "LLMTRACE_ALERT_WEBHOOK_URL: alert_webhook_url: 'hooks.slack.com/…' is not an http:// or https:// URL"


def test_a_merge_and_an_alert_setting_up_a_new_store_at_once_both_succeed(tmp_path: Path) -> None:
    """Connections of one process share the database: both would create its tables, the loser failing."""
    from datetime import datetime

    from llmtrace.store.alerts import record
    from llmtrace.store.files import StorePaths
    from llmtrace.store.merge import merge

    failures: list[BaseException] = []
    for trial in range(8):
        paths = StorePaths(tmp_path / f"fresh{trial}.duckdb")
        start = threading.Barrier(2)

        def run(work: Any) -> None:
            start.wait()
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 (collected, asserted below)
                failures.append(exc)

        row = ("id", datetime(2026, 1, 1), "budget_exceeded", "global", "m", "{}")
        threads = [threading.Thread(target=run, args=(lambda: merge(paths),)),
                   threading.Thread(target=run, args=(lambda: record(paths, [row]),))]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
