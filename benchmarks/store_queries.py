"""Query latency of every llmtrace.query function the dashboard uses, on 10M realistic spans.

Generates the spans inside DuckDB (50 models with a skew, 10k users, 300 tenants, 30 features,
30 days, ~2% errors, lognormal latency and tokens), into a real store file, then times each query
cold (first call) and warm (median of 5). Also reports bytes on disk per million spans.

    .venv/bin/python benchmarks/store_queries.py [--spans 10000000] [--db /tmp/llmtrace-queries/q.duckdb]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from llmtrace import query  # noqa: E402
from llmtrace.store import resolve  # noqa: E402
from llmtrace.store.schema import migrate  # noqa: E402
from store_helpers import start_afresh  # noqa: E402

GENERATE = """
INSERT INTO spans BY NAME
WITH base AS (
    SELECT i,
           hash(i) AS h,
           (now() AT TIME ZONE 'UTC') - to_microseconds(CAST(random() * 30 * 86400e6 AS BIGINT)) AS t,
           CAST(pow(random(), 3) * 50 AS INT) AS model_n,
           CAST(pow(random(), 2) * 300 AS INT) AS tenant_n,
           CAST(pow(random(), 2) * 10000 AS INT) AS user_n,
           CAST(random() * 30 AS INT) AS feature_n,
           exp(5.5 + 0.9 * sqrt(-2 * ln(random() + 1e-12)) * cos(2 * pi() * random())) AS dur,
           CAST(exp(6 + sqrt(-2 * ln(random() + 1e-12)) * cos(2 * pi() * random())) AS BIGINT) AS tin,
           CAST(exp(4.5 + 0.8 * sqrt(-2 * ln(random() + 1e-12)) * cos(2 * pi() * random())) AS BIGINT) AS tout,
           random() AS r
    FROM range({n}) r(i)
)
SELECT printf('%032x', h) AS trace_id, printf('%016x', i) AS span_id, NULL AS parent_span_id,
       'svc-' || (i % 3) AS service_name, 'chat model-' || model_n AS span_name,
       t AS start_time, dur AS duration_ms, CASE WHEN i % 3 = 0 THEN dur * 0.2 END AS ttft_ms,
       CASE WHEN r < 0.02 THEN 'ERROR' ELSE 'UNSET' END AS status,
       CASE WHEN r < 0.01 THEN 'RateLimitError' WHEN r < 0.02 THEN 'InternalServerError' END AS error_type,
       CASE WHEN r < 0.01 THEN 429 WHEN r < 0.02 THEN 500 END AS http_status,
       1 + CAST(r < 0.03 AS INT) AS http_attempts, CAST(r < 0.01 AS INT) AS rate_limited,
       CASE WHEN model_n < 30 THEN 'openai' ELSE 'anthropic' END AS provider, 'chat' AS operation,
       'model-' || model_n AS request_model, 'model-' || model_n || '-2025' AS response_model,
       'user-' || user_n AS user_id, 'tenant-' || tenant_n AS tenant, 'feature-' || feature_n AS feature,
       NULL AS session_id,
       tin * 0.6 AS uncached_input_tokens, tin * 0.4 AS cache_read_tokens, 0 AS cache_write_tokens,
       tout * 0.9 AS visible_output_tokens, tout * 0.1 AS reasoning_tokens, tin AS input_tokens,
       tout AS output_tokens, 'provider' AS usage_source,
       CASE WHEN model_n = 49 THEN NULL ELSE (tin * (0.1 + model_n / 10) + tout * (0.4 + model_n / 5)) / 1e6 END AS cost_usd,
       'genai-prices' AS cost_source, model_n = 49 AS unpriced, i % 3 = 0 AS stream,
       tin * (0.1 + model_n / 10) / 1e6 AS cost_input_usd, tout * (0.4 + model_n / 5) / 1e6 AS cost_output_usd,
       'model-' || model_n AS priced_model, 'resp-' || i AS response_id, ['stop'] AS finish_reasons,
       'api.example.com' AS server_address, 443 AS server_port, 1024 AS request_max_tokens,
       0.7 AS request_temperature, tin * 0.4 * (0.09 + model_n / 11) / 1e6 AS cache_savings_usd,
       printf('%016x', hash(user_n, i % 50)) AS request_hash, '{{"gen_ai.request.seed":7}}' AS attributes
FROM base
"""


def generate(db: str, spans: int) -> None:
    paths = resolve(db)
    start_afresh(paths)
    paths.db.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(paths.db))
    migrate(con)
    start = time.perf_counter()
    con.execute(GENERATE.format(n=spans))
    con.execute("CHECKPOINT")
    con.close()
    print(f"generated {spans:,} spans in {time.perf_counter() - start:.0f} s")


def time_call(fn: Callable[[], Any]) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    cold = time.perf_counter() - start
    warm = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
    return cold, statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--db", default="/tmp/llmtrace-queries/q.duckdb")
    args = parser.parse_args()
    generate(args.db, args.spans)
    db = args.db
    month = query.TimeRange.last(timedelta(days=30))
    day = query.TimeRange.last(timedelta(days=1))
    acme = query.Filters(tenant="tenant-1")
    cases: dict[str, Callable[[], Any]] = {
        "spend_by tenant, 30 d": lambda: query.spend_by("tenant", month, db=db),
        "spend_by feature, 30 d": lambda: query.spend_by("feature", month, db=db),
        "spend_by model, 30 d": lambda: query.spend_by("model", month, db=db),
        "spend_by user (top 20), 30 d": lambda: query.spend_by("user", month, db=db, limit=20),
        "spend_over_time tenant, 1 day buckets, 30 d": lambda: query.spend_over_time("tenant", month, "1 day", db=db),
        "spend_over_time model, 1 hour buckets, 1 d": lambda: query.spend_over_time("model", day, "1 hour", db=db),
        "latency_percentiles by model, 30 d": lambda: query.latency_percentiles(month, db=db),
        "latency_percentiles by model, 1 hour buckets, 1 d": lambda: query.latency_percentiles(day, bucket="1 hour", db=db),
        "error_rates by provider, 1 day buckets, 30 d": lambda: query.error_rates(month, bucket="1 day", db=db),
        "top_calls by cost, 30 d": lambda: query.top_calls(month, db=db),
        "top_calls by duration, 30 d": lambda: query.top_calls(month, order="duration", db=db),
        "unpriced_calls, 30 d": lambda: query.unpriced_calls(month, db=db),
        "spent, one tenant, 30 d": lambda: query.spent(month, acme, db=db),
        "summary, 30 d": lambda: query.summary(month, db=db),
        "dimension_values (sidebar filters), 30 d": lambda: query.dimension_values(month, db=db),
        "token_usage, 30 d": lambda: query.token_usage(month, db=db),
        "token_usage, 1 day buckets, 30 d": lambda: query.token_usage(month, bucket="1 day", db=db),
        "latency_histogram by model, 30 d": lambda: query.latency_histogram(month, db=db),
        "error_rates by model, 30 d": lambda: query.error_rates(month, by="model", db=db),
        "alert_history, 30 d": lambda: query.alert_history(month, db=db),
    }
    print(f"\n| query ({args.spans:,} spans) | cold s | warm s |\n|---|---|---|")
    for name, fn in cases.items():
        cold, warm = time_call(fn)
        print(f"| {name} | {cold:.3f} | {warm:.3f} |")
    size = Path(db).stat().st_size
    print(f"\ndisk: {size / 1e9:.2f} GB = {size / args.spans * 1e6 / 1e6:.0f} MB per million spans")


if __name__ == "__main__":
    main()
