"""OTLP exporters for spans and metrics, over HTTP/protobuf (default) or gRPC.

Configured by llmtrace's ``otlp_endpoint`` setting (argument, ``LLMTRACE_OTLP_ENDPOINT`` or the config file: a
base URL, like ``OTEL_EXPORTER_OTLP_ENDPOINT``, for both signals) and ``otlp_protocol``; or, without it, by the
standard variables (``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT``, ``_PROTOCOL``, ``_HEADERS``, ``_TIMEOUT``,
``OTEL_TRACES_EXPORTER=none``, ...), which the OTel exporters read themselves. Headers and timeouts always come
from the variables.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.metrics.view import DefaultAggregation, ExplicitBucketHistogramAggregation

from ._guard import internal_errors
from .config import OTLP_PROTOCOLS, ConfigError, Settings

logger = logging.getLogger("llmtrace")



def protocol_for(signal: str, settings: Settings) -> str:
    """``signal`` is ``TRACES`` or ``METRICS``; an explicit setting wins over the variables."""
    env = os.environ
    given = (
        ("llmtrace's otlp_protocol setting", settings.otlp_protocol),
        (f"OTEL_{signal}_EXPORTER", _named_otlp_exporter(signal)[1]),  # otlp_proto_grpc: gRPC, whatever else says
        (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL")),
    )
    where, protocol = next(((where, value) for where, value in given if value), ("", "http/protobuf"))
    if protocol not in OTLP_PROTOCOLS:
        raise ConfigError(f"{where}: the OTLP protocol must be one of {', '.join(OTLP_PROTOCOLS)}, got {protocol!r}")
    return protocol


@dataclass(frozen=True)
class Destinations:
    """Which signals llmtrace exports over OTLP, and where."""

    base_url: str | None  # llmtrace's own setting, for both signals; None: the OTEL_* variables say where
    traces: bool
    metrics: bool


_SIGNAL_PATHS = ("/v1/traces", "/v1/metrics")


def destinations(settings: Settings) -> Destinations:
    if settings.otlp_endpoint:
        base = settings.otlp_endpoint.rstrip("/")
        for path in _SIGNAL_PATHS:  # a signal's full URL given where the base is meant: the base
            base = base.removesuffix(path)
        return Destinations(base, traces=True, metrics=True)
    env = os.environ

    def configured(signal: str) -> bool:
        # Only a signal with an endpoint of its own or the common one: an exporter of the other would post to
        # localhost:4318 (with the app's OTLP headers), where nobody asked for it.
        if not _named_otlp_exporter(signal)[0]:
            return False
        return bool(env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))

    return Destinations(None, traces=configured("TRACES"), metrics=configured("METRICS"))


# OpenTelemetry's names of its OTLP exporters (OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER), and the protocol each fixes.
_OTLP_EXPORTER_NAMES = {"otlp": None, "otlp_proto_http": "http/protobuf", "otlp_proto_grpc": "grpc"}


def _named_otlp_exporter(signal: str) -> tuple[bool, str | None]:
    """Whether ``OTEL_{signal}_EXPORTER`` names an OTLP exporter (unset: it means otlp; console, none or prometheus:
    not over OTLP), and the protocol its name fixes, if it does."""
    names = [name.strip() for name in os.environ.get(f"OTEL_{signal}_EXPORTER", "").lower().split(",") if name.strip()]
    if not names:
        return True, None
    named = [name for name in names if name in _OTLP_EXPORTER_NAMES]
    return (True, _OTLP_EXPORTER_NAMES[named[0]]) if named else (False, None)


# signal -> (gRPC exporter module, HTTP exporter module, class name, HTTP path under a base URL)
_EXPORTERS = {
    "TRACES": (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "OTLPSpanExporter",
        "/v1/traces",
    ),
    "METRICS": (
        "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
        "OTLPMetricExporter",
        "/v1/metrics",
    ),
}


def _exporter(signal: str, settings: Settings, base_url: str | None) -> Any:
    grpc_module, http_module, class_name, http_path = _EXPORTERS[signal]
    grpc = protocol_for(signal, settings) == "grpc"
    exporter_class = getattr(importlib.import_module(grpc_module if grpc else http_module), class_name)
    if base_url is None:
        return exporter_class()  # the OTEL_EXPORTER_OTLP_* variables configure it
    return exporter_class(endpoint=base_url if grpc else base_url + http_path)


def span_exporter(settings: Settings, base_url: str | None) -> Any:
    return _exporter("TRACES", settings, base_url)


def metric_exporter(settings: Settings, base_url: str | None) -> Any:
    return _exporter("METRICS", settings, base_url)


class SwappedMetricExporter(MetricExporter):
    """The one exporter of the meter provider llmtrace makes. That provider stays the process's global one and its
    readers are fixed when it is made, so what it exports through is swapped instead: to none by ``uninstrument()``,
    to where a later ``instrument()`` says (never the first endpoint forever)."""

    def __init__(self, first: MetricExporter) -> None:
        aggregation = dict(first._preferred_aggregation or {})
        # The OTLP exporters ask for explicit-bucket histograms with no boundaries, for which older OpenTelemetry SDKs
        # (1.30 among them) use their own defaults (0, 5, 10, ... 10,000: every call under 5 s in one bucket), not the
        # GenAI conventions' buckets the instruments advise. The default aggregation is that histogram with the advice.
        if isinstance(aggregation.get(Histogram), ExplicitBucketHistogramAggregation):
            aggregation[Histogram] = DefaultAggregation()
        super().__init__(preferred_temporality=first._preferred_temporality, preferred_aggregation=aggregation)
        self.target: MetricExporter | None = first

    def swap(self, target: MetricExporter | None) -> None:
        """Export through ``target`` from now on; the one before is shut down (its pending export ends first)."""
        old, self.target = self.target, target
        if old is not None:
            old.shutdown()

    def hand_over(self) -> SwappedMetricExporter | None:
        """A new one exporting through this one's target from now on, this one through none (its target not shut
        down): for a forked child's own meter provider. None when this one exports nowhere."""
        target, self.target = self.target, None
        return SwappedMetricExporter(target) if target is not None else None

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        target = self.target
        if target is None:  # uninstrumented: the points are dropped
            return MetricExportResult.SUCCESS
        return target.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        target = self.target
        return target.force_flush(timeout_millis) if target is not None else True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.swap(None)


def in_background(work: Callable[[], object], name: str) -> threading.Event:
    """Start ``work`` (an OTLP flush or shutdown) on a daemon thread of its own; the event is set once it is done.

    The SDK bounds neither: a batch processor's ``force_flush`` ignores its timeout, and its shutdown waits out the
    exporter's retries, up to ``OTEL_EXPORTER_OTLP_TIMEOUT`` (10 s by default) for each signal, against a collector
    that refuses or does not answer (a one-call script took 13 s to exit). Run this way, the caller waits as long as
    it chooses; a thread still running goes on until the exporter gives up, or ends with the process.
    """
    done = threading.Event()

    def run() -> None:
        with internal_errors():
            work()
        done.set()

    threading.Thread(target=run, name=f"llmtrace-otlp-{name}", daemon=True).start()
    return done


def wait_for_shutdowns(shutdowns: dict[str, threading.Event], seconds: float) -> None:
    """Wait, ``seconds`` at most in all, for OTLP shutdowns begun with ``in_background``; say which did not finish."""
    deadline = time.monotonic() + seconds
    late = [what for what, done in shutdowns.items() if not done.wait(max(0.0, deadline - time.monotonic()))]
    if late:
        logger.warning(
            "llmtrace: the last OTLP export of %s did not finish within %g s (otlp_shutdown_timeout): the collector is "
            "unreachable or slow. llmtrace stops waiting for it; what was not sent yet does not reach the collector",
            " and ".join(late), seconds,
        )  # fmt: skip


# Loggers of the OTLP exporters, and of the SDK's batch processors and metric reader, which log (with a
# traceback) every batch an exporter raised on (older SDKs' HTTP exporters raise when nobody listens):
# each failed batch logs again, which floods an app's logs while a backend is down. llmtrace lets one
# line through per logger and quiet period, but only where every exporter is llmtrace's own: the loggers
# are shared, and the app's own exporter's failures (a vendor refusing its key) are the app's to see.
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",  # the batch processor (SDK >= 1.34)
    "opentelemetry.sdk.trace.export",  # the batch span processor before that
    "opentelemetry.sdk.metrics._internal.export",  # the periodic metric reader
)
QUIET_PERIOD_S = 300.0


class RepeatedExportErrors(logging.Filter):
    """First export warning or error per logger passes (with a word on what it means); repeats
    within the quiet period are counted and dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.store_on = True  # what the word on the failure says is not affected (instrument() sets it)
        self.suppressed = 0
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        with self._lock:
            last = self._last.get(record.name)
            if last is not None and now - last < QUIET_PERIOD_S:
                self.suppressed += 1
                return False
            self._last[record.name] = now
        unaffected = "LLM calls and the local store are" if self.store_on else "LLM calls are"
        record.msg = (
            f"{record.getMessage()} (llmtrace: {unaffected} not affected; "
            f"repeats of this are muted for {QUIET_PERIOD_S / 60:.0f} minutes)"
        )
        record.args = ()
        return True


export_error_filter = RepeatedExportErrors()


def quiet_repeated_export_errors(store_on: bool) -> None:
    export_error_filter.store_on = store_on
    for name in _EXPORTER_LOGGERS:
        exporter_logger = logging.getLogger(name)
        if export_error_filter not in exporter_logger.filters:
            exporter_logger.addFilter(export_error_filter)
