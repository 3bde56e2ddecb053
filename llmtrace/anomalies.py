"""Anomaly detectors: cost and reliability problems nobody set a budget for, found in the store.

Each detector reads the store through ``llmtrace.query`` (off the request path, in the monitor
thread) and returns alerts whose ids make each situation fire once (per hour, per window, or ever).
Thresholds are settings (``anomaly_*``, or the ``[anomalies]`` table of llmtrace.toml).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Callable

from . import query
from .alerts import Alert
from .budgets import reached, usd
from .config import Settings

Detector = Callable[[Settings, query.Store, datetime], list[Alert]]

# A model name that names a snapshot: a date (2024-08-06, 20241022), a -MMDD or -YYMM suffix (gpt-4-0613,
# gpt-4-1106-preview, mistral-large-2411), a -00N version (gemini-1.5-pro-002) or -MM-YYYY (command-r-08-2024).
# Anything else is an alias the provider may repoint.
_PINNED = re.compile(r"(?:20\d\d-?[01]\d-?[0-3]\d|-\d{4}(?:-preview)?$|-\d{3}$|-[01]\d-20\d\d$|@\d{8}$)")


def is_pinned(model: str) -> bool:
    return bool(_PINNED.search(model)) and not model.endswith("-latest")


def _windows(settings: Settings, now: datetime) -> tuple[query.TimeRange, query.TimeRange]:
    """The recent window (ending now) and the baseline before it."""
    recent_start = now - timedelta(seconds=settings.anomaly_recent_window)
    recent = query.TimeRange(recent_start, now + timedelta(seconds=1))
    baseline = query.TimeRange(recent_start - timedelta(seconds=settings.anomaly_baseline_window), recent_start)
    return recent, baseline


def _slot(now: datetime, seconds: float) -> int:
    """Which ``seconds``-long slot of time ``now`` (naive: UTC, as the store keeps time) is in: alerts about a lasting
    situation repeat once per slot, the same slot in every process whatever its time zone."""
    return int(_utc(now).timestamp() // seconds)


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now


def spend_spikes(settings: Settings, db: query.Store, now: datetime) -> list[Alert]:
    recent, baseline = _windows(settings, now)
    window = settings.anomaly_recent_window
    alerts = []
    for by in ("tenant", "feature"):
        for row in query.spend_rates(by, recent, baseline, window, db=db):
            if (row["baseline_buckets"] < 2 or row["baseline_priced_calls"] == 0
                    or min(row["recent_calls"], row["baseline_calls"]) < settings.anomaly_min_calls):  # fmt: skip
                continue  # too little history (or traffic), or none with a known cost, to call anything a spike
            # Per window in which it had calls; or, where more, per day at this time of day (a nightly batch against
            # the nights before, not against the trickle of the day's other hours).
            usual = row["baseline_usd"] / row["baseline_buckets"]
            if row["same_time_days"] >= 2:
                usual = max(usual, row["same_time_usd"] / row["same_time_days"])
            spent = row["recent_usd"]
            if usual <= 0 or not (reached(spent, settings.anomaly_spend_spike_min_usd)
                                  and reached(spent, settings.anomaly_spend_spike_factor * usual)):  # fmt: skip
                continue
            ratio = spent / usual
            alerts.append(Alert(
                f"spend_spike:{by}={row['key']}:{_slot(now, window)}", "spend_spike", f"{by}={row['key']}",
                f"Spend spike: {by} {row['key']} spent {usd(spent)} in the last {_span(window)}, "
                f"{ratio:,.1f}x its usual {usd(usual)}",
                {"spent_usd": spent, "usual_usd": usual, "ratio": ratio, "calls": row["recent_calls"]},
            ))  # fmt: skip
    return alerts


def prompt_growth(settings: Settings, db: query.Store, now: datetime) -> list[Alert]:
    recent, baseline = _windows(settings, now)
    alerts = []
    for row in query.input_token_medians("feature", recent, baseline, db=db):
        calls = min(row["recent_calls"], row["baseline_calls"])
        before, after = row["baseline_median"], row["recent_median"]
        if calls < settings.anomaly_min_calls or not before or not reached(after, before * (1 + settings.anomaly_prompt_growth)):
            continue
        alerts.append(Alert(
            f"prompt_growth:feature={row['key']}:{_slot(now, settings.anomaly_recent_window)}", "prompt_growth",
            f"feature={row['key']}",
            f"Prompt growth: feature {row['key']} now sends a median {after:,.0f} input tokens a call, "
            f"up {after / before - 1:.0%} from {before:,.0f}",
            {"median_input_tokens": after, "baseline_median_input_tokens": before, "calls": row["recent_calls"]},
        ))  # fmt: skip
    return alerts


def duplicate_calls(settings: Settings, db: query.Store, now: datetime) -> list[Alert]:
    since = now - timedelta(seconds=settings.anomaly_recent_window)
    rows = query.repeated_requests(
        query.TimeRange(since, now + timedelta(seconds=1)), settings.anomaly_duplicate_window,
        settings.anomaly_duplicate_count, db=db,
    )  # fmt: skip
    groups: dict[tuple[str | None, str | None], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["tenant"], row["feature"]), []).append(row)
    alerts = []
    for (tenant, feature), repeated in groups.items():
        most = max(row["repeats"] for row in repeated)
        subject = f"tenant={tenant} feature={feature}"
        who = ", ".join(f"{name} {value}" for name, value in (("tenant", tenant), ("feature", feature)) if value is not None)
        alerts.append(Alert(
            f"duplicate_calls:{subject}:{_slot(now, settings.anomaly_recent_window)}", "duplicate_calls", subject,
            f"Duplicate calls: {who or 'calls with no tenant or feature'} sent {len(repeated)} request(s) again within "
            f"{settings.anomaly_duplicate_window:g} s (up to {most} times each)",
            {"requests": len(repeated), "most_repeats": most, "request_hashes": [r["request_hash"] for r in repeated][:20]},
        ))  # fmt: skip
    return alerts


def model_drift(settings: Settings, db: query.Store, now: datetime) -> list[Alert]:
    recent, baseline = _windows(settings, now)
    seen: dict[tuple[str, str], dict[str, dict]] = {}
    for row in query.response_models(recent, baseline, db=db):
        seen.setdefault((row["provider"], row["request_model"]), {})[row["response_model"]] = row
    alerts = []
    for (provider, requested), answers in seen.items():
        before = [m for m, r in answers.items() if r["baseline_calls"] >= settings.anomaly_min_calls]
        if not before:
            continue
        for model, row in answers.items():
            if row["recent_calls"] and not row["baseline_calls"]:
                alerts.append(Alert(
                    f"model_drift:{provider}:{requested}:{model}", "model_drift", f"model={requested}",
                    f"Model drift: {provider} now answers {requested} with {model} (before: {', '.join(before)})",
                    {"provider": provider, "request_model": requested, "response_model": model, "before": before},
                ))  # fmt: skip
    if settings.anomaly_require_pinned_models:
        day = _slot(now, 86400)
        for row in query.request_models(recent, db=db):
            model = row["request_model"]
            if not is_pinned(model):
                alerts.append(Alert(
                    f"unpinned_model:{row['provider']}:{model}:{day}", "unpinned_model", f"model={model}",
                    f"Unpinned model: {row['calls']} call(s) to {row['provider']} asked for {model}, an alias the "
                    "provider can repoint; the config asks for pinned (dated) models",
                    {"provider": row["provider"], "request_model": model, "calls": row["calls"]},
                ))  # fmt: skip
    return alerts


def failure_rates(settings: Settings, db: query.Store, now: datetime) -> list[Alert]:
    window = settings.anomaly_rate_window
    since = now - timedelta(seconds=window)
    rows = query.error_rates(query.TimeRange(since, now + timedelta(seconds=1)), by="provider", db=db, in_app=True)
    alerts = []
    slot = _slot(now, window)
    for row in rows:
        if row["calls"] < settings.anomaly_min_calls:
            continue
        for kind, count, threshold, what in (
            ("error_rate", row["errors"], settings.anomaly_error_rate, "failed"),
            ("rate_limit_rate", row["rate_limited_calls"], settings.anomaly_rate_limit_rate, "were rate-limited (429)"),
        ):
            rate = count / row["calls"]
            if reached(rate, threshold):
                alerts.append(Alert(
                    f"{kind}:provider={row['key']}:{slot}", kind, f"provider={row['key']}",
                    f"{kind.replace('_', ' ').capitalize()}: {_percent(rate)} of {row['calls']} calls to {row['key']} "
                    f"{what} in the last {_span(window)} (threshold {_percent(threshold)})",
                    {"rate": rate, "calls": row["calls"], "count": count, "threshold": threshold},
                ))  # fmt: skip
    return alerts


def _percent(share: float) -> str:
    """3 significant digits, never rounded to 0: 0.1 % is not "0%"."""
    return f"{share * 100:.3g}%"


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return "hour" if hours == 1 else f"{hours} hours"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} minutes"
    return f"{seconds:g} s"


DETECTORS: dict[str, Detector] = {
    "spend_spike": spend_spikes,
    "prompt_growth": prompt_growth,
    "duplicate_calls": duplicate_calls,
    "model_drift": model_drift,
    "error_rate": failure_rates,
}


def detect(settings: Settings, db: query.Store, now: datetime) -> list[Alert]:
    """Every enabled detector's alerts (``anomaly_detectors`` names them), all read from one snapshot, but those about
    a situation that alerted within its window: a detector looks back over a window that slides, and a short
    incident is still in it after the clock moved into the next slot (a new alert id)."""
    now = _utc(now).astimezone(timezone.utc).replace(tzinfo=None)  # as the store keeps time
    alerts: list[Alert] = []
    with query.open_store(db, merge_first=False, in_app=True) as store:
        for name in settings.anomaly_detectors:
            alerts.extend(DETECTORS[name](settings, store, now))
        if not alerts:
            return []
        windows = _repeat_windows(settings)
        last = query.last_alerts(now - timedelta(seconds=max(windows.values())), db=store)
    return [alert for alert in alerts if not _alerted_within(last, alert, now, windows)]


def _repeat_windows(settings: Settings) -> dict[str, float]:
    """How long each kind of anomaly alert stays quiet about one subject once it fired (model drift: by its id, once)."""
    rates = {"error_rate": settings.anomaly_rate_window, "rate_limit_rate": settings.anomaly_rate_window}
    return {"unpinned_model": 86400.0, **rates, "": settings.anomaly_recent_window}


def _alerted_within(last: dict[tuple[str, str], datetime], alert: Alert, now: datetime, windows: dict[str, float]) -> bool:
    fired = last.get((alert.kind, alert.subject))
    return fired is not None and now - fired < timedelta(seconds=windows.get(alert.kind, windows[""]))
