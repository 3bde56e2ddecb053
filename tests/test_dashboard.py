"""The demo end to end, and the dashboard over the store it fills: Streamlit's AppTest for every page
and every store state, then the real server in headless Chromium (screenshots in ``screenshots/``)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from streamlit.testing.v1 import AppTest

from llmtrace import attributes as A
from llmtrace import dashboard, query
from llmtrace.dashboard import charts as C
from conftest import DEMO_CALLS
from llmtrace.demo import SERVICE_NAME
from store_helpers import MIXED_TENANTS, database_held_by_another_process, emit_at, fill_mixed_store, provider_with_store

HERE = Path(__file__).parent
SCREENSHOTS = Path(os.environ.get("LLMTRACE_SCREENSHOTS", HERE.parent / "screenshots"))
CHROMIUM = "/usr/bin/chromium"
# Page -> (what it must say, how many charts it must draw).
PAGES = {
    "Overview": ("Spend today (UTC)", 2),
    "Latency": ("Latency by model", 3),
    "Spend": ("Saved by prompt caching", 4),
    "Reliability": ("Rate-limited calls", 2),
    "Calls": ("Most expensive calls", 0),
    "Budgets": ("No budgets are configured", 0),
}


def test_demo_fills_the_store_through_the_real_sdks(demo_db: str) -> None:
    window = query.TimeRange.last(timedelta(hours=1))
    assert query.span_count(db=demo_db)["spans"] == DEMO_CALLS  # one span a call, retries included in it
    tenants = query.spend_by("tenant", window, query.Filters(service=SERVICE_NAME), db=demo_db)
    assert len(tenants) >= 3 and all(row["cost_usd"] > 0 for row in tenants)
    providers = {row["key"] for row in query.spend_by("provider", window, db=demo_db)}
    assert providers == {"openai", "anthropic", "localhost"}  # localhost: the demo's self-hosted model (seed 11 calls it)
    usage = query.token_usage(window, db=demo_db)[0]
    assert usage["cache_read_tokens"] > 0 and usage["reasoning_tokens"] > 0 and usage["cache_savings_usd"] > 0
    assert query.summary(window, db=demo_db)["unpriced_calls"] > 0  # the self-hosted model has no price


# --- AppTest ---------------------------------------------------------------------------------------


def _app(db: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("LLMTRACE_DB", db)
    monkeypatch.setenv(dashboard.ENV_REFRESH, "0")
    return AppTest.from_file(str(dashboard.APP), default_timeout=60)


def _texts(at: AppTest) -> str:
    parts: list[Any] = [*at.markdown, *at.info, *at.warning, *at.error, *at.title, *at.subheader, *at.caption]
    return "\n".join(str(p.value) for p in parts) + "\n" + "\n".join(m.label for m in at.metric)


def test_every_page_renders_numbers_and_charts(demo_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []  # each time a page run opens the store (builds its view of database + segments)
    build_view = query._create_view
    monkeypatch.setattr(query, "_create_view", lambda con, paths, wait: (opened.append(str(paths.db)), build_view(con, paths, wait))[1])
    at = _app(demo_db, monkeypatch)
    at.run()
    for page, (says, charts) in PAGES.items():
        opened.clear()
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, (page, at.exception)
        assert len(opened) == 2, page  # the sidebar's filter values, then the page's one snapshot
        assert says in _texts(at), page
        assert len(at.get("vega_lite_chart")) == charts, page
    at.sidebar.radio(key="page").set_value("Overview").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Calls"] == f"{DEMO_CALLS:,}"
    assert metrics["Spend today (UTC)"].startswith("$") and metrics["Spend today (UTC)"] != "$0.0000"
    assert any("have no cost" in w.value for w in at.warning)  # the unpriced self-hosted model is flagged


def test_an_empty_cell_reads_as_a_dash_not_none(demo_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedding model never streams, so it has no time to first token: the browser shows "—" there, where
    Streamlit shows "None" unless told (the browser draws a table on a canvas: what it is told is in the element)."""
    at = _app(demo_db, monkeypatch)
    at.run()
    tables = []
    for page in PAGES:
        at.sidebar.radio(key="page").set_value(page).run()
        tables += list(at.dataframe)
    assert len(tables) >= 5 and all(table.proto.placeholder == "—" for table in tables)
    at.sidebar.radio(key="page").set_value("Latency").run()
    by_model = at.dataframe[0].value.set_index("key")
    assert by_model.loc["text-embedding-3-small", ["ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms"]].isna().all()


def test_filters_narrow_every_number(demo_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(demo_db, monkeypatch)
    at.run()
    all_calls = int(next(m.value for m in at.metric if m.label == "Calls").replace(",", ""))
    at.sidebar.selectbox(key="filter_provider").set_value("anthropic").run()
    anthropic_calls = int(next(m.value for m in at.metric if m.label == "Calls").replace(",", ""))
    window = query.TimeRange.last(timedelta(days=1))
    expected = query.summary(window, query.Filters(provider="anthropic"), db=demo_db)["calls"]
    assert 0 < anthropic_calls == expected < all_calls
    at.sidebar.radio(key="page").set_value("Calls").run()
    assert all(model.startswith("claude") for model in at.dataframe[0].value["model"])


def test_percentiles_over_time_are_of_models_never_lumped(demo_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    models = query.latency_percentiles(query.TimeRange.last(timedelta(days=1)), db=demo_db)
    assert len(models) > 8  # more than the chart draws
    at = _app(demo_db, monkeypatch)
    at.run()
    at.sidebar.radio(key="page").set_value("Latency").run()
    assert not at.exception
    assert f"the 8 models with the most calls, of {len(models)}" in _texts(at)
    over_time = at.get("vega_lite_chart")[0].proto.spec
    assert f'"{C.OTHER}"' not in over_time and len({m["key"] for m in models}) == len(models)


@pytest.fixture(scope="module")
def mixed_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = str(tmp_path_factory.mktemp("mixed") / "mixed.duckdb")
    fill_mixed_store(db)
    return db


def test_rates_tables_and_spend_say_what_they_leave_out(mixed_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(mixed_db, monkeypatch)
    at.run()
    at.sidebar.radio(key="page").set_value("Reliability").run()
    served = MIXED_TENANTS + 5  # the 2 calls a budget refused were never sent: not in any rate
    assert {m.label: m.value for m in at.metric}["Error rate"] == f"{1 / served:.1%}"
    at.sidebar.radio(key="page").set_value("Spend").run()
    texts = _texts(at)
    assert f"The 50 biggest spenders. Not listed: {MIXED_TENANTS + 7 - 50} calls of other tenants" in texts and "have no cost" in texts
    assert len(at.dataframe[0].value) == 50
    at.sidebar.selectbox(key="filter_model").set_value("llama-local").run()
    assert {m.label: m.value for m in at.metric}["Spend"] == "unknown"  # no known price: not $0
    at.sidebar.radio(key="page").set_value("Overview").run()
    overview = {m.label: m.value for m in at.metric}
    # Top tenants and features by spend: no bar of length 0 that would read $0, a word instead.
    assert not at.get("vega_lite_chart")
    captions = [c.value for c in at.caption]
    assert "Not drawn, their calls having no known price: self-hosted." in captions
    assert "Not drawn, their calls having no known price: search." in captions
    if (datetime.now(timezone.utc) - timedelta(minutes=10)).day == datetime.now(timezone.utc).day:  # the calls are today's
        assert overview["Spend today (UTC)"] == overview["Month to date"] == overview["Projected month end"] == "unknown"
    at.sidebar.radio(key="page").set_value("Calls").run()
    assert not at.exception
    assert any("has a known cost" in i.value for i in at.info)
    assert list(at.dataframe[0].value["model"]) == ["llama-local", "llama-local"]  # the slowest calls still listed



def _chart_rows(chart: Any) -> list[dict[str, Any]]:
    import pyarrow as pa

    return pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_all().to_pylist()


def test_lines_over_time_break_where_a_key_had_no_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency and error-rate lines are not drawn across minutes in which a model or provider had no calls."""
    db = str(tmp_path / "gaps.duckdb")
    provider, writer = provider_with_store(db, flush_interval=600)
    # 45 minutes of calls: the charts' buckets are minutes.
    start = datetime.now(timezone.utc).replace(tzinfo=None, second=30, microsecond=0) - timedelta(minutes=50)
    called = [0, 1, 2, 10, 11, 45]  # minutes after start in which gpt-4o-mini was called
    for minute in called:
        emit_at(provider, start + timedelta(minutes=minute), 0.5)
    for minute in range(46):  # another model, every minute: no gaps
        emit_at(provider, start + timedelta(minutes=minute), 1.0, **{A.REQUEST_MODEL: "gpt-4o", A.PROVIDER_NAME: "anthropic"})
    writer.shutdown()
    at = _app(db, monkeypatch)
    at.run()
    for page, column in (("Latency", "latency_p99_ms"), ("Reliability", "error_rate")):
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, page
        rows = _chart_rows(at.get("vega_lite_chart")[0])
        series = {key: sorted((r["bucket"], r[column]) for r in rows if r["key"] == key) for key in {r["key"] for r in rows}}
        gappy = series["gpt-4o-mini" if page == "Latency" else "openai"]
        minutes = [round((when - gappy[0][0]).total_seconds() / 60) for when, _ in gappy]
        assert minutes == list(range(46)), page  # every minute from the first call to the last
        assert [m for m, (_, value) in zip(minutes, gappy) if value is not None] == called, page
        assert all(value is not None for _, value in series["gpt-4o" if page == "Latency" else "anthropic"]), page


def test_sub_cent_spend_gets_axis_ticks_fine_enough_to_tell_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A day of a cheap model costs fractions of a cent: an axis in whole cents would read $0.00 at every tick."""
    db = str(tmp_path / "cheap.duckdb")
    provider, writer = provider_with_store(db, flush_interval=600)
    now = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=5)
    for i in range(3):
        emit_at(provider, now - timedelta(minutes=i), **{A.COST_USD: 0.0004})
    writer.shutdown()
    at = _app(db, monkeypatch)
    at.run()
    # The top tenant's bar ($0.0012), and the tallest stack of spend over time (a call a bucket: $0.0004).
    for page, axis, top in (("Overview", "x", 0.0012), ("Spend", "y", 0.0004)):
        at.sidebar.radio(key="page").set_value(page).run()
        spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
        fmt = spec["encoding"][axis]["axis"]["format"]
        assert fmt.startswith("$,.") and fmt.endswith("f"), page
        decimals = int(fmt[3:-1])
        assert decimals > 2 and round(top / 5, decimals) > 0, page  # ticks (~a fifth of the top apart) read apart
        money_tips = [t for t in spec["encoding"]["tooltip"] if "Spend" in t.get("title", "")]
        assert [t["format"] for t in money_tips] == ["$,.6~f"], page
    at.sidebar.radio(key="page").set_value("Overview").run()
    assert [m.value for m in at.metric if m.label == "Spend"] == ["$0.0012"]
    # A known cost never reads $0.0000: a cheap call's, in a headline figure and in a table alike.
    assert C.money(0.000042) == "$0.000042" and C.money(0.0523) == "$0.0523" and C.money(0) == "$0.00"


def test_tags_named_like_the_dashboards_own_labels_are_kept_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tenant named "All" is one tenant, not the "no filter" choice; one named "(untagged)" or "(others)" is neither
    the calls without a tenant nor the lump of the smaller tenants."""
    db = str(tmp_path / "names.duckdb")
    provider, writer = provider_with_store(db, flush_interval=600)
    now = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=5)
    for tenant, cost, calls in (("All", 0.002, 2), (C.UNTAGGED, 0.5, 1), (None, 0.03, 1), (C.OTHER, 1.0, 1),
                                *((f"t{i}", 0.01 * (i + 1), 1) for i in range(9))):  # fmt: skip
        for _ in range(calls):
            emit_at(provider, now, **{A.TENANT: tenant, A.COST_USD: cost})
    writer.shutdown()
    at = _app(db, monkeypatch)
    at.run()
    at.sidebar.radio(key="page").set_value("Spend").run()
    assert not at.exception
    table = at.dataframe[0].value
    spent = dict(zip(table["key"], table["cost_usd"]))
    assert spent[f'"{C.UNTAGGED}"'] == 0.5 and spent[C.UNTAGGED] == 0.03 and spent[f'"{C.OTHER}"'] == 1.0
    lumped = [r for r in _chart_rows(at.get("vega_lite_chart")[0]) if r["key"] == C.OTHER]  # beyond the top 8 tenants
    assert lumped and sum(r["cost_usd"] for r in lumped) == pytest.approx(0.002 * 2 + 0.01 + 0.02 + 0.03 + 0.03)
    at.sidebar.selectbox(key="filter_tenant").set_value("All").run()
    assert [m.value for m in at.metric if m.label == "Spend"] == [C.money(0.004)]  # the tenant's two calls, not everyone's
    options = at.sidebar.selectbox(key="filter_tenant").options
    assert options[:2] == ["All", C.UNTAGGED] and {'"All"', f'"{C.UNTAGGED}"'} <= set(options)  # no filter, no tag, tenants
    at.sidebar.selectbox(key="filter_tenant").set_value(C.NO_TAG).run()  # the calls no tenant was tagged on
    assert [m.value for m in at.metric if m.label == "Spend"] == [C.money(0.03)]
    at.sidebar.selectbox(key="filter_tenant").set_value(C.UNTAGGED).run()  # the tenant named so
    assert [m.value for m in at.metric if m.label == "Spend"] == [C.money(0.5)]
    at.sidebar.selectbox(key="filter_tenant").set_value(C.NO_FILTER).run()
    everyone = query.summary(query.TimeRange.last(timedelta(days=1)), db=db)["cost_usd"]
    assert [m.value for m in at.metric if m.label == "Spend"] == [C.money(everyone)]


def test_small_costs_and_rates_are_shown_to_their_first_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short embedding costs $0.00000016 (a table column at six decimals read $0.000000); one failure in 300 calls
    is 0.33% (an axis of whole percents read 0% at every tick), one in 3,000 0.033% (the headline read 0.0%)."""
    db = str(tmp_path / "small.duckdb")
    provider, writer = provider_with_store(db, flush_interval=600)
    now = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=5)
    for i in range(300):
        failed = {A.ERROR_TYPE: "InternalServerError", A.COST_USD: None} if i == 0 else {}
        emit_at(provider, now, **{A.REQUEST_MODEL: "text-embedding-3-small", A.COST_USD: 1.6e-7, **failed})
    writer.shutdown()
    monkeypatch.setenv("LLMTRACE_TRACE_URL", 'http://grafana/explore?left={"queries":[{"query":"{trace_id}"}]}&span={span_id}')
    at = _app(db, monkeypatch)
    at.run()
    at.sidebar.radio(key="page").set_value("Calls").run()
    assert not at.exception  # the link's JSON braces are not format() fields
    cost_format = json.loads(at.dataframe[0].proto.columns)["cost_usd"]["type_config"]["format"]
    assert cost_format.replace(",", "") % 1.6e-7 == "$0.00000016"  # printf's format, less Streamlit's thousands mark
    top = query.top_calls(query.TimeRange.last(timedelta(days=1)), db=db, limit=1)[0]
    assert at.dataframe[0].value["trace"][0] == f'http://grafana/explore?left={{"queries":[{{"query":"{top["trace_id"]}"}}]}}&span={top["span_id"]}'
    at.sidebar.radio(key="page").set_value("Reliability").run()
    assert {m.label: m.value for m in at.metric}["Error rate"] == "0.3%"
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    fmt = spec["encoding"]["y"]["axis"]["format"]
    assert fmt.startswith(".") and fmt.endswith("%") and round(100 / 300 / 5, int(fmt[1:-1])) > 0  # ticks read apart
    assert C.percent(1, 3000) == "0.033%" and C.percent(1, 8) == "12.5%" and C.money(-0.0012) == "-$0.0012"


def test_the_spend_of_tenants_not_listed_is_what_they_spent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the 50 biggest spenders: their spend (not a float residue like $-0.00000000000000089), or "unknown"
    when none of their calls has a price (never $0.00)."""
    db = str(tmp_path / "rest.duckdb")
    provider, writer = provider_with_store(db, flush_interval=600)
    now = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=5)
    for i in range(50):
        emit_at(provider, now, **{A.TENANT: f"tenant-{i:02}", A.COST_USD: 0.1 + 0.001 * i})
    for i in range(3):  # failed calls: nothing billed
        emit_at(provider, now, **{A.TENANT: f"failing-{i}", A.ERROR_TYPE: "APIConnectionError", A.COST_USD: None})
    writer.shutdown()
    at = _app(db, monkeypatch)
    at.run()
    at.sidebar.radio(key="page").set_value("Spend").run()
    assert "Not listed: 3 calls of other tenants, $0.00 (pick" in _texts(at)
    provider, writer = provider_with_store(db, flush_interval=600)
    for i in range(3):
        emit_at(provider, now, **{A.TENANT: f"self-hosted-{i}", A.REQUEST_MODEL: "llama-local", A.COST_USD: None, A.COST_UNPRICED: True})
    writer.shutdown()
    at.run()
    assert "Not listed: 6 calls of other tenants, $0.00, and 3 of them without a known price (pick" in _texts(at)


def test_spend_charts_draw_every_priced_dollar_and_refused_calls_are_said(mixed_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(mixed_db, monkeypatch)
    at.run()
    at.sidebar.radio(key="page").set_value("Spend").run()
    spend = query.summary(query.TimeRange.last(timedelta(days=1)), db=mixed_db)["cost_usd"]
    for chart in at.get("vega_lite_chart")[:3]:  # per tenant, feature and model over time
        rows = _chart_rows(chart)
        # A bucket holding an unpriced key (self-hosted) drew none of its other keys' bars.
        assert all(row["cost_usd"] is not None for row in rows)
        assert sum(row["cost_usd"] for row in rows) == pytest.approx(spend)
    at.sidebar.selectbox(key="filter_feature").set_value("over-budget").run()  # every call refused by a budget
    for page in ("Reliability", "Overview"):
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, page
        assert any("2 call(s) in" in i.value and "refused by a block budget" in i.value for i in at.info), page
    for page in ("Overview", "Spend"):  # nothing was billed: $0, as "Spend today" says; "unknown" is for no known price
        at.sidebar.radio(key="page").set_value(page).run()
        assert [m.value for m in at.metric if m.label == "Spend"] == ["$0.00"], page
        # No chart of nothing (bars of length 0, a lone $0.00 tick, a "NaN" axis): words.
        assert not [chart for chart in at.get("vega_lite_chart") if "Spend" in chart.proto.spec], page
        captions = [c.value for c in at.caption]
        assert captions.count("Nothing was billed in the last 24 hours.") == {"Overview": 2, "Spend": 3}[page], captions
    assert "No tokens recorded in the last 24 hours." in captions

def test_missing_store_says_how_to_fill_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(str(tmp_path / "nothing-here.duckdb"), monkeypatch)
    at.run()
    assert not at.exception
    assert "No llmtrace store" in at.info[0].value and "llmtrace demo" in at.info[0].value


def test_empty_range_says_so_on_every_page(demo_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(demo_db, monkeypatch)
    at.run()
    at.sidebar.selectbox(key="range").set_value("Custom").run()
    at.sidebar.date_input(key="days").set_value((date(2020, 1, 1), date(2020, 1, 2))).run()
    for page in PAGES:
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, page
        if page != "Budgets":
            assert any("No LLM calls in 2020-01-01 – 2020-01-02" in i.value for i in at.info), page


def test_store_locked_by_a_writer_shows_a_clear_message(demo_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "locked.duckdb"
    shutil.copy(demo_db, db)
    with database_held_by_another_process(str(db)):
        at = _app(str(db), monkeypatch)
        at.run()
        assert not at.exception
        assert "held by another process" in at.error[0].value


# --- a real server in a real browser ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _dashboard_server(db: str) -> Iterator[str]:
    """``llmtrace dashboard`` on this store, on a free port: its URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmtrace.cli", "dashboard", "--db", db, "--port", str(port), "--refresh", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        dashboard.wait_until_up(process, url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def served(demo_db: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    db = tmp_path / "served.duckdb"
    shutil.copy(demo_db, db)
    with _dashboard_server(str(db)) as url:
        yield url, str(db)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        # The closed network refuses Chromium's background connections: turn them off.
        flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
        instance = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        yield instance
        instance.close()


_METRIC_JS = """label => {
    for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
        const l = m.querySelector('[data-testid="stMetricLabel"]');
        if (l && l.innerText.trim() === label) return m.querySelector('[data-testid="stMetricValue"]').innerText;
    }
    return null;
}"""


def _metric(page: Any, label: str) -> Any:
    """A metric's value once Streamlit has drawn it: it draws a page's elements one after another, so a
    heading being there does not mean the metrics below it are (a loaded machine showed the gap)."""
    page.wait_for_function(f"label => ({_METRIC_JS})(label) !== null", arg=label, timeout=30_000)
    return page.evaluate(_METRIC_JS, label)


def test_each_page_in_headless_chromium(served: tuple[str, str], browser: Any) -> None:
    url, _ = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    for name, (says, charts) in PAGES.items():
        page.goto(f"{url}/?page={name.lower()}")
        page.get_by_text(says).first.wait_for(timeout=30_000)
        # Charts are drawn by Vega in the browser: wait until each has its canvas or SVG.
        page.wait_for_function(
            "n => document.querySelectorAll('[data-testid=\"stVegaLiteChart\"] canvas, "
            "[data-testid=\"stVegaLiteChart\"] svg.marks').length >= n", arg=charts, timeout=30_000)
        assert page.locator('[data-testid="stException"]').count() == 0, name
        assert page.get_by_text("Traceback").count() == 0, name
        page.screenshot(path=str(SCREENSHOTS / f"{name.lower()}.png"), full_page=True)
    page.goto(f"{url}/?page=overview")
    page.get_by_text("Spend today (UTC)").wait_for(timeout=30_000)
    assert _metric(page, "Calls") == f"{DEMO_CALLS:,}"


def test_a_running_apps_calls_appear_without_a_reload(served: tuple[str, str], browser: Any) -> None:
    url, db = served
    page = browser.new_page()
    page.goto(f"{url}/?page=overview")
    page.get_by_text("Spend today (UTC)").wait_for(timeout=30_000)
    assert _metric(page, "Calls") == f"{DEMO_CALLS:,}"
    # Another process (the "app") writes 7 more LLM spans into the store; the open page picks them up.
    subprocess.run([sys.executable, str(HERE / "store_helpers.py"), db, "7", "late-tenant"], check=True, timeout=60)
    page.wait_for_function(f"() => ({_METRIC_JS})('Calls') === '{DEMO_CALLS + 7:,}'", timeout=30_000)


def test_stopping_the_dashboard_command_stops_the_server(tmp_path: Path) -> None:
    import urllib.request

    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "llmtrace.cli", "dashboard", "--db", str(tmp_path / "x.duckdb"),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    dashboard.wait_until_up(process, url)
    process.terminate()  # what a supervisor (systemd, a test fixture) sends
    process.wait(timeout=20)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)


def test_a_tenant_beyond_the_filter_list_can_be_typed_in(tmp_path: Path, browser: Any) -> None:
    """The sidebar lists the 500 tenants with the most calls; an app with more can still look at any one of them."""
    db = str(tmp_path / "many.duckdb")
    provider, writer = provider_with_store(db, flush_interval=600)
    now = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=5)
    for i in range(505):
        for _ in range(2 if i < 500 else 1):  # the last five have the fewest calls: not listed
            emit_at(provider, now, 0.5, **{A.TENANT: f"tenant-{i:04}"})
    writer.shutdown()
    assert "tenant-0503" not in query.dimension_values(query.TimeRange.last(timedelta(days=1)), db=db)["tenant"]
    with _dashboard_server(db) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/?page=overview")
        assert _metric(page, "Calls") == "1,005"
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Tenant").locator("input").click()
        page.keyboard.type("tenant-0503")
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => ({_METRIC_JS})('Calls') === '1'", timeout=30_000)


def test_a_page_drawn_without_the_store_draws_itself_once_it_can(demo_db: str, tmp_path: Path, browser: Any) -> None:
    """Opened before the app wrote anything, or while a writer held the store: the page has neither filters nor
    numbers, and used to stay so until a reload. It looks again every refresh (1 s here)."""
    db = str(tmp_path / "later.duckdb")
    with _dashboard_server(db) as url:
        page = browser.new_page()
        page.goto(f"{url}/?page=overview")
        page.get_by_text("No llmtrace store at").wait_for(timeout=30_000)
        shutil.copy(demo_db, db)  # the app's first spans arrive
        assert _metric(page, "Calls") == f"{DEMO_CALLS:,}"
        with database_held_by_another_process(db):
            page.reload()
            page.get_by_text("The store cannot be read right now").wait_for(timeout=30_000)
        assert _metric(page, "Calls") == f"{DEMO_CALLS:,}"


def test_milliseconds_and_dollars_in_tables_are_grouped_by_thousands(demo_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A P99 of 12707 ms reads "12,707 ms" (Streamlit formats the numbers in the browser, as each column says)."""
    at = _app(demo_db, monkeypatch)
    at.run()
    formats = set()
    for page in PAGES:
        at.sidebar.radio(key="page").set_value(page).run()
        for table in at.dataframe:
            formats |= {c.get("type_config", {}).get("format") for c in json.loads(table.proto.columns).values()}
    assert {"%,.0f ms", "$%,.6f"} <= formats
    assert not [f for f in formats if f and f.startswith(("%.", "$%.")) and ("ms" in f or "$" in f)], formats


def test_a_model_has_one_colour_in_every_latency_chart(demo_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-token chart leaves out the models never streamed (embeddings): its colours must not shift."""
    at = _app(demo_db, monkeypatch)
    at.run()
    at.sidebar.radio(key="page").set_value("Latency").run()
    specs = [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]
    assert len(specs) == 3
    domains = [spec["encoding"]["color"]["scale"].get("domain") for spec in specs]
    assert domains[0] and domains[1] == domains[0] and domains[2][: len(domains[0])] == domains[0], domains
    assert domains[2][len(domains[0]) :] in ([], [C.OTHER])  # the histogram's "(others)", last
    assert "text-embedding-3-small" in domains[0]
    histogram_calls = specs[2]["encoding"]["y"]["axis"]
    assert histogram_calls["tickMinStep"] == 1  # calls are whole: no 0.5 tick
