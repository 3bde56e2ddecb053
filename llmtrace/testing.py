"""Helpers for testing code instrumented by llmtrace: capture spans and metrics in memory.

    with llmtrace.testing.capture() as captured:
        client.chat.completions.create(...)
    assert captured.spans()[0].attributes["llmtrace.cost.usd"] > 0
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .instrumentation import instrument, uninstrument


class Captured:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.metric_reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metric_reader])

    def spans(self) -> tuple[ReadableSpan, ...]:
        return tuple(self.exporter.get_finished_spans())

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        data = self.metric_reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points


@contextmanager
def capture(**options: Any) -> Iterator[Captured]:
    """Instrument into in-memory span and metric readers for the duration of the block.

    The DuckDB store is off unless ``store=True`` (then ``db=`` says where) is passed.
    """
    captured = Captured()
    options.setdefault("store", False)  # spans stay in memory unless a test asks for the store
    instrument(tracer_provider=captured.tracer_provider, meter_provider=captured.meter_provider, **options)
    try:
        yield captured
    finally:
        uninstrument()
