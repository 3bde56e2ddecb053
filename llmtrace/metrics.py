"""GenAI client metrics (semconv histograms with the conventions' buckets) plus a USD cost counter.

Tenant and feature become metric labels only when allow-listed or among the top-K values seen so
far; every other value is folded into ``__other__`` so a metrics backend never sees unbounded
cardinality. Spans (and the store) always carry the exact values.
"""

from __future__ import annotations

import heapq
import threading
from typing import Any, Mapping

from opentelemetry.metrics import Meter

from . import attributes as A

TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]

# The conventions' attributes of every GenAI client metric, and OpenAI's refinement's service tier (its system
# fingerprint, which changes with every deployment of a model, is left to the spans: a metric series each).
_BASE_KEYS = (A.OPERATION_NAME, A.PROVIDER_NAME, A.REQUEST_MODEL, A.RESPONSE_MODEL, A.SERVER_ADDRESS, A.SERVER_PORT,
              A.OPENAI_RESPONSE_SERVICE_TIER)  # fmt: skip
_MAX_TRACKED = 10_000  # distinct values counted for top-K; beyond this the counts are halved
_RECOMPUTE_EVERY = 256


class LabelLimiter:
    """Admits allow-listed values and the current top-K by call count; the rest are ``__other__``."""

    def __init__(self, allowlist: tuple[str, ...], top_k: int) -> None:
        self._allow = frozenset(allowlist)
        self._top_k = top_k
        self._counts: dict[str, int] = {}
        self._top: frozenset[str] = frozenset()
        self._since = 0
        self._lock = threading.Lock()

    def label(self, value: str) -> str:
        if value in self._allow:
            return value
        with self._lock:  # held for a dict update, never across a call
            counts = self._counts
            if value in counts:
                counts[value] += 1
            else:
                if len(counts) >= _MAX_TRACKED:
                    # Full: halve every count and forget the values that reach 0 (the one-offs), so a value seen
                    # often from now on can still rise into the top-K; what was counted long ago weighs less.
                    self._counts = counts = {v: c // 2 for v, c in counts.items() if c > 1}
                counts[value] = 1
            self._since += 1
            if self._since >= _RECOMPUTE_EVERY or (value not in self._top and len(self._top) < self._top_k):
                self._since = 0
                self._top = frozenset(heapq.nlargest(self._top_k, counts, key=counts.__getitem__))
        return value if value in self._top else A.OTHER_BUCKET


class Instruments:
    def __init__(self, meter: Meter, allowlist: tuple[str, ...], top_k: int) -> None:
        self.tokens = meter.create_histogram(
            A.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            A.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.time_to_first_chunk = meter.create_histogram(
            A.METRIC_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time to receive the first chunk of a streamed response",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.cost = meter.create_counter(A.METRIC_COST, unit="USD", description="Cost of GenAI calls in USD")
        self.unpriced = meter.create_counter(
            A.METRIC_UNPRICED_CALLS, unit="{call}", description="Calls whose model has no known price"
        )
        self._tenants = LabelLimiter(allowlist, top_k)
        self._features = LabelLimiter(allowlist, top_k)

    def record(
        self,
        span_attrs: Mapping[str, Any],
        duration_s: float,
        ttfc_s: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cost_usd: float | None,
        error_type: str | None,
    ) -> None:
        labels = {k: span_attrs[k] for k in _BASE_KEYS if k in span_attrs}
        tenant = span_attrs.get(A.TENANT)
        if tenant is not None:
            labels[A.TENANT] = self._tenants.label(tenant)
        feature = span_attrs.get(A.FEATURE)
        if feature is not None:
            labels[A.FEATURE] = self._features.label(feature)
        if error_type is not None:
            self.duration.record(duration_s, {**labels, A.ERROR_TYPE: error_type})
        else:
            self.duration.record(duration_s, labels)
        if ttfc_s is not None:
            self.time_to_first_chunk.record(ttfc_s, labels)
        if input_tokens is not None:
            self.tokens.record(input_tokens, {**labels, A.TOKEN_TYPE: "input"})
        if output_tokens is not None:
            self.tokens.record(output_tokens, {**labels, A.TOKEN_TYPE: "output"})
        if cost_usd is not None:
            self.cost.add(cost_usd, labels)
        elif span_attrs.get(A.COST_UNPRICED):
            self.unpriced.add(1, labels)
