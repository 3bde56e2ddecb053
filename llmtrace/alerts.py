"""Alerts: budgets crossing their thresholds and anomalies, delivered once each, across processes.

Each alert has an id that says what it is about (``budget:tenant=acme day $50:acme:2026-11-23:limit``).
Before delivering, the monitor records it in the store's ``alerts`` table; only the process whose
insert wins delivers it, so a fleet of processes sends one alert, not one each. Channels: the
``llmtrace`` logger (always), a webhook (JSON POST with a Slack-compatible ``text``, sent by its own
thread with a timeout and retries), and Python callbacks registered with ``on_alert`` (called by a thread of their
own, so that a slow one holds up neither the app nor the budgets' reads of the store).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Callable

from ._guard import internal_errors
from .store.files import StorePaths, utc_now

logger = logging.getLogger("llmtrace")


@dataclass(frozen=True)
class Alert:
    alert_id: str  # what it is about; the same situation always gets the same id
    kind: str  # budget_warning, budget_exceeded, spend_spike, prompt_growth, duplicate_calls, model_drift, ...
    subject: str  # what it concerns: tenant=acme, feature=search, provider=openai, model=gpt-4o
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    fired_at: datetime = field(default_factory=utc_now)

    def payload(self) -> dict[str, Any]:
        """The webhook body: ``text`` for Slack-compatible receivers, the fields for everyone else."""
        fields = asdict(self)
        fields["fired_at"] = self.fired_at.isoformat() + "Z"
        fields["details"] = self.json_details()
        return {"text": f"llmtrace: {self.message}", "alert": fields}

    def json_details(self) -> Any:
        """The details as strict JSON takes them: a number that is not finite is null (Python's json writes
        ``Infinity``, which JavaScript's, Go's and Slack's parsers refuse: the whole alert would be lost)."""
        return _finite(self.details)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


Callback = Callable[[Alert], Any]
# At uninstrument() / exit, alerts already fired wait this long at most for the app's callbacks.
CALLBACKS_AT_STOP_S = 5.0
_callbacks: list[Callback] = []
_callbacks_lock = threading.Lock()


def on_alert(callback: Callback) -> Callback:
    """Call ``callback(alert)`` for every alert this process delivers, from llmtrace's ``llmtrace-alerts`` thread, one
    alert at a time in the order they fire: a slow callback delays the alerts after it, never the app's calls, the
    budgets' reads of the store or ``instrument()``."""
    with _callbacks_lock:
        _callbacks.append(callback)
    return callback


def remove_callback(callback: Callback) -> None:
    with _callbacks_lock:
        if callback in _callbacks:
            _callbacks.remove(callback)


def shown_url(url: str) -> str:
    """A webhook's URL as logs show it: scheme and host. Its path is the secret of many receivers (Slack's
    ``/services/T…/B…/<token>``), and logs are read by more people than config files."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…" if parts.scheme and parts.netloc else "(a URL that is not one)"


class _Outbox:
    """Delivers alerts from a thread of its own, one at a time in the order they came, so that a slow or failing
    receiver holds up nothing else. The thread starts with the first alert."""

    thread_name = "llmtrace-outbox"

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        # The parent's delivering thread does not exist here; what it had queued is the parent's to deliver.
        self._start()

    def send(self, alert: Alert) -> None:
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self._lost(alert)

    def join(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued was delivered or given up on (tests and shutdown); not on the delivering thread
        itself (a callback that stops llmtrace), which would wait for its own alert."""
        if threading.current_thread() is self._thread:
            return False
        done = self._queue.all_tasks_done  # the condition Queue.join() waits on, here with a timeout
        with done:
            return done.wait_for(lambda: not self._queue.unfinished_tasks, timeout)

    def unsent(self) -> int:
        """Alerts queued or being delivered."""
        return self._queue.unfinished_tasks

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if alert is None:
                    return
                with internal_errors():
                    self._deliver(alert)
            finally:
                self._queue.task_done()

    def _deliver(self, alert: Alert) -> None:
        raise NotImplementedError

    def _lost(self, alert: Alert) -> None:
        raise NotImplementedError


class Callbacks(_Outbox):
    """Hands each alert to the app's ``on_alert`` callbacks."""

    thread_name = "llmtrace-alerts"

    def _deliver(self, alert: Alert) -> None:
        with _callbacks_lock:
            callbacks = list(_callbacks)
        for callback in callbacks:
            try:
                callback(alert)
            except Exception as exc:  # the app's callback failed: its error, not llmtrace's; keep going
                logger.error("llmtrace: alert callback %r raised %r", callback, exc)

    def _lost(self, alert: Alert) -> None:
        logger.error("llmtrace: 1,000 alerts wait for on_alert callbacks that do not return; alert %s not passed to them",
                     alert.alert_id)  # fmt: skip


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib turns a redirected POST into a GET without its body (301, 302, 303): the alert would be lost while the
    # receiver answers 200. A redirect is refused instead, so the log names it.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_post = urllib.request.build_opener(_NoRedirects).open


class Webhook(_Outbox):
    """POSTs alerts: a slow or failing receiver never holds up the app or the monitor."""

    thread_name = "llmtrace-webhook"

    def __init__(self, url: str, *, timeout: float = 5.0, attempts: int = 3, backoff: float = 1.0) -> None:
        self.url = url
        self.shown = shown_url(url)
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.failed = 0  # alerts given up on
        super().__init__()

    def _lost(self, alert: Alert) -> None:
        self.failed += 1
        logger.error("llmtrace: webhook queue full; alert %s not sent to %s", alert.alert_id, self.shown)

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps(alert.payload()).encode()
        for attempt in range(1, self.attempts + 1):
            retry = True
            request = urllib.request.Request(
                self.url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "llmtrace"}
            )
            try:
                with _post(request, timeout=self.timeout) as response:
                    response.read()
                return
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                if 300 <= exc.code < 400:
                    target = urllib.parse.urljoin(self.url, exc.headers.get("Location") or "")
                    problem += f", a redirect to {shown_url(target)}, which a POST does not follow: give that URL"
                retry = exc.code >= 500 or exc.code == 429  # any other refusal: resending will not help
            except (OSError, ValueError) as exc:  # unreachable, timed out, refused, malformed URL
                problem = str(exc).replace(self.url, self.shown)
            if not retry or attempt >= self.attempts:
                self.failed += 1
                logger.error("llmtrace: webhook %s failed for alert %s (%s); gave up", self.shown, alert.alert_id, problem)
                return
            time.sleep(self.backoff * 2 ** (attempt - 1))


class Alerter:
    """Records alerts in the store, then delivers those no process delivered before."""

    def __init__(self, paths: StorePaths, webhook: Webhook | None = None) -> None:
        self.paths = paths
        self.webhook = webhook
        self.callbacks = Callbacks()
        self._known: set[str] = set()  # ids recorded already (by this process or another): never retried
        self._waiting: dict[str, Alert] = {}  # not recorded yet: the store was busy
        self._lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self.callbacks.after_fork_in_child()
        if self.webhook is not None:
            self.webhook.after_fork_in_child()

    def fire(self, alerts: list[Alert]) -> None:
        """Deliver the alerts that fire for the first time (and those still waiting for the store)."""
        with self._lock:
            self._fire(alerts)

    def _fire(self, alerts: list[Alert]) -> None:
        from .store.alerts import record

        for alert in alerts:
            if alert.alert_id not in self._known:
                self._waiting.setdefault(alert.alert_id, alert)
        if not self._waiting:
            return
        rows = [(a.alert_id, a.fired_at, a.kind, a.subject, a.message, json.dumps(a.json_details(), default=str))
                for a in self._waiting.values()]
        inserted = record(self.paths, rows)
        if inserted is None:  # another process holds the database: try again next round
            return
        fresh = [alert for alert in self._waiting.values() if alert.alert_id in inserted]
        self._known.update(self._waiting)
        self._waiting.clear()
        for alert in fresh:
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        logger.warning("llmtrace alert: %s", alert.message)
        if self.webhook is not None:
            self.webhook.send(alert)
        if _callbacks:
            self.callbacks.send(alert)

    def stop(self) -> None:
        """Alerts already fired still go out: to the callbacks within ``CALLBACKS_AT_STOP_S``, to the webhook within its
        timeout. What is left is counted in the log (every alert is in the store's history)."""
        if not self.callbacks.join(timeout=CALLBACKS_AT_STOP_S):
            logger.error("llmtrace: %d alert(s) not passed to on_alert callbacks before llmtrace stopped: a callback did "
                         "not return within %g s", self.callbacks.unsent(), CALLBACKS_AT_STOP_S)  # fmt: skip
        self.callbacks.stop()
        webhook = self.webhook
        if webhook is not None:
            if not webhook.join(timeout=webhook.timeout):
                logger.error(
                    "llmtrace: %d alert(s) not sent to webhook %s before llmtrace stopped: it did not answer within "
                    "%g s (every alert is in the store's alert history: llmtrace budgets)",
                    webhook.unsent(), webhook.shown, webhook.timeout,
                )  # fmt: skip
            webhook.stop()
