"""Budgets: declaring them (file and code), their periods, and their status from a real store."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import llmtrace
from llmtrace import attributes as A
from llmtrace import budgets
from llmtrace.cli import main
from store_helpers import emit, emit_at, provider_with_store

GOOD = """
[llmtrace]
store = true

[[budgets]]
scope = "tenant"        # global | tenant | user | feature | model
key = "acme"            # or "*" for each key separately
period = "day"          # day | week | month | 24h | 7d
limit_usd = 50.0
warn_at = 0.8
action = "block"        # alert | block

[[budgets]]
scope = "tenant"
key = "*"
period = "month"
limit_usd = 1.0
timezone = "America/New_York"

[alerts]
webhook_url = "https://hooks.example.com/llm-spend"
"""


def test_the_documented_file_format_loads_as_written(tmp_path: Path) -> None:
    path = tmp_path / "llmtrace.toml"
    path.write_text(GOOD)
    first, second = budgets.load_file(path)
    assert first == budgets.Budget("tenant", "acme", "day", 50.0, 0.8, "block", "UTC")
    assert (second.key, second.period, second.warn_at, second.action, second.timezone) == (
        "*", "month", 0.8, "alert", "America/New_York")


@pytest.mark.parametrize(
    ("field", "bad", "line", "says"),
    [
        ("scope", '"team"', 6, "'team' is not one of global, tenant"),
        ("limit_usd", "-5.0", 9, "must be a positive number"),
        ("period", '"fortnight"', 8, "'fortnight' is not one of"),
        ("action", '"shout"', 11, "'shout' is not one of alert, block"),
        ("warn_at", "1.5", 10, "fraction of the limit"),
    ],
)
def test_a_bad_budget_names_file_line_and_field(tmp_path: Path, field: str, bad: str, line: int, says: str) -> None:
    path = tmp_path / "llmtrace.toml"
    text = GOOD.replace(f"{field} = ", f"{field} = {bad} #", 1)
    path.write_text(text)
    assert text.splitlines()[line - 1].startswith(f"{field} = {bad}")
    with pytest.raises(llmtrace.ConfigError) as caught:
        budgets.load_file(path)
    assert f"{path}, line {line}: budget field `{field}`" in str(caught.value) and says in str(caught.value)


def test_a_budget_without_a_required_field_says_which_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "llmtrace.toml"
    path.write_text('[llmtrace]\nstore = true\n\n[[budgets]]\nscope = "tenant"\nkey = "a"\nperiod = "day"\n')
    with pytest.raises(llmtrace.ConfigError) as caught:
        budgets.load_file(path)
    assert str(caught.value) == f"{path}, line 4: budget field `limit_usd`: missing (every budget has scope, period, limit_usd)"


def test_malformed_toml_and_unknown_fields_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "llmtrace.toml"
    path.write_text("[[budgets]]\nscope = \n")
    with pytest.raises(llmtrace.ConfigError, match="malformed TOML"):
        budgets.load_file(path)
    path.write_text('[[budgets]]\nscope = "global"\nperiod = "day"\nlimit_usd = 1\nceiling = 3\n')
    with pytest.raises(llmtrace.ConfigError, match=r"line 5: budget field `ceiling`: unknown field"):
        budgets.load_file(path)
    path.write_text('budgets = [{scope = "global", period = "day", limit_usd = 1, ceiling = 3}]\n')  # inline: no [[budgets]] line
    with pytest.raises(llmtrace.ConfigError, match=rf"^{re.escape(str(path))}: budget field `ceiling`: unknown field"):
        budgets.load_file(path)


def test_budgets_declared_in_code_are_validated_too() -> None:
    budgets.clear()
    with pytest.raises(llmtrace.ConfigError, match="a tenant budget needs a key"):
        budgets.add(scope="tenant", period="day", limit_usd=5)
    added = budgets.add(scope="global", period="7d", limit_usd=100)
    assert budgets.declared() == (added,) and added.name == "global 7d $100"
    budgets.clear()


@pytest.mark.parametrize(
    ("period", "zone", "now", "start", "end"),
    [
        ("day", "UTC", "2026-11-23 17:00", "2026-11-23 00:00", "2026-11-24 00:00"),
        ("day", "America/New_York", "2026-11-23 03:00", "2026-11-22 05:00", "2026-11-23 05:00"),
        ("week", "UTC", "2026-11-26 12:00", "2026-11-23 00:00", "2026-11-30 00:00"),  # Monday to Monday
        ("month", "UTC", "2026-12-31 23:59", "2026-12-01 00:00", "2027-01-01 00:00"),
        ("month", "Europe/Paris", "2026-03-15 12:00", "2026-02-28 23:00", "2026-03-31 22:00"),  # DST starts in March
        ("24h", "UTC", "2026-11-23 17:00", "2026-11-22 17:00", "2026-11-23 17:00"),
        ("7d", "UTC", "2026-11-23 17:00", "2026-11-16 17:00", "2026-11-23 17:00"),
    ],
)
def test_period_windows(period: str, zone: str, now: str, start: str, end: str) -> None:
    budget = budgets.Budget("global", None, period, 1.0, timezone=zone)
    parse = datetime.fromisoformat
    assert budget.window(parse(now)) == (parse(start), parse(end))


def test_status_from_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "budgets.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 4, tenant="acme", cost=0.25)  # $1.00
    emit(provider, 1, tenant="globex", cost=0.5)
    writer.force_flush()
    each = budgets.Budget("tenant", "*", "day", 0.9)
    one = budgets.Budget("tenant", "globex", "24h", 2.0)
    total = budgets.Budget("global", None, "month", 10.0)
    rows = {(s.budget, s.key): s for s in budgets.status([each, one, total], db=db)}
    assert rows[(each, "acme")].spent_usd == pytest.approx(1.0) and rows[(each, "acme")].state == "exceeded"
    assert rows[(each, "globex")].spent_usd == pytest.approx(0.5) and rows[(each, "globex")].state == "ok"
    assert rows[(one, "globex")].used == pytest.approx(0.25)
    assert rows[(total, None)].spent_usd == pytest.approx(1.5)
    assert rows[(total, None)].projected_usd is not None and rows[(total, None)].projected_usd >= 1.5
    warned = budgets.status([budgets.Budget("tenant", "acme", "day", 1.2)], db=db)[0]
    assert warned.state == "warning"  # $1.00 of $1.20 is past the default 80%

    config = tmp_path / "llmtrace.toml"
    config.write_text(GOOD)
    assert main(["budgets", "--config", str(config), "--db", db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["budget", "key", "period"]
    acme = next(line for line in out if line.startswith("tenant=acme"))
    assert "$1.00" in acme and "$50.00" in acme and "2.0%" in acme and "ok" in acme
    assert any(line.startswith("tenant=*") and "acme" in line and "exceeded" in line for line in out)


def test_the_budgets_table_orders_keys_by_spend_says_rolling_and_names_unpriced_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "budgets.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 1, tenant="globex", cost=0.5)
    emit(provider, 3, tenant="acme", cost=0.25)
    emit(provider, 1, tenant="initech", cost=0.5)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    for _ in range(2):
        emit_at(provider, now, **{A.TENANT: "umbrella", A.COST_USD: None, A.COST_UNPRICED: True})  # no known price
    writer.force_flush()
    each = budgets.Budget("tenant", "*", "24h", 10.0)
    rows = budgets.status([each, budgets.Budget("global", None, "day", 10.0)], db=db)
    assert [row.key for row in rows] == ["acme", "globex", "initech", "umbrella", None]  # by spend, then name
    assert rows[0].period_end is None and rows[-1].period_end is not None  # a rolling window never starts over
    assert rows[0].projected_usd is None and rows[-1].projected_usd is not None  # nor has an end to project to
    # The calls with no known price count for nothing: a key that has only those is "unknown", never "ok" at $0.
    assert [(row.unpriced_calls, row.state) for row in rows] == [(0, "ok"), (0, "ok"), (0, "ok"), (2, "unknown"), (2, "ok")]

    config = tmp_path / "llmtrace.toml"
    config.write_text('[[budgets]]\nscope = "tenant"\nkey = "*"\nperiod = "24h"\nlimit_usd = 10.0\n')
    assert main(["budgets", "--config", str(config), "--db", db]) == 0
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines() if line.startswith("tenant=*")]
    assert all(cells[-1] == "rolling" for cells in table)
    # Its spend unknown: not "$0.00" nor "0.0%".
    assert [cells[1:] for cells in table if cells[1] == "umbrella"] == [["umbrella", "24h", "-", "2", "$10.00", "-", "-",
                                                                         "unknown", "rolling"]]  # fmt: skip
    assert "count for nothing in these budgets" in out
    # Only the calls under the budgets listed: acme's budget has none without a price.
    config.write_text('[[budgets]]\nscope = "tenant"\nkey = "acme"\nperiod = "24h"\nlimit_usd = 10.0\n')
    assert main(["budgets", "--config", str(config), "--db", db]) == 0
    assert "no known price" not in capsys.readouterr().out


def test_instrument_refuses_a_bad_budget_and_applies_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtrace import call

    path = tmp_path / "llmtrace.toml"
    path.write_text(GOOD.replace('scope = "tenant"        #', 'scope = "team"        #', 1))
    monkeypatch.setenv("LLMTRACE_CONFIG", str(path))
    with pytest.raises(llmtrace.ConfigError, match=rf"{path}, line 6: budget field `scope`: 'team'"):
        llmtrace.instrument(store=False)
    assert call.runtime is None


def test_budgets_command_without_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budgets", "--db", str(tmp_path / "none.duckdb")]) == 0
    out = capsys.readouterr().out
    assert "No budgets in llmtrace.toml (not found)" in out and f"No llmtrace store at {tmp_path / 'none.duckdb'}" in out


def test_budgets_over_a_mistyped_store_path_is_an_error_not_all_green(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "llmtrace.toml"
    config.write_text('[[budgets]]\nscope = "global"\nperiod = "day"\nlimit_usd = 10.0\n')
    assert main(["budgets", "--config", str(config), "--db", str(tmp_path / "nope.duckdb")]) == 2
    captured = capsys.readouterr()
    assert "no llmtrace store at" in captured.err and "ok" not in captured.out
    assert not (tmp_path / "nope.duckdb").exists()


def open_budgets_page(monkeypatch: pytest.MonkeyPatch, db: str, config: Path) -> Any:
    """The dashboard's Budgets page over this store and config, run by Streamlit's AppTest."""
    from streamlit.testing.v1 import AppTest

    from llmtrace import dashboard

    for name, value in (("LLMTRACE_DB", db), ("LLMTRACE_CONFIG", str(config)), (dashboard.ENV_REFRESH, "0")):
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(str(dashboard.APP), default_timeout=60)
    at.run()
    at.sidebar.radio(key="page").set_value("Budgets").run()
    assert not at.exception
    return at


def test_the_dashboard_budgets_page_shows_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "budgets.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 4, tenant="acme", cost=0.25)
    emit_at(provider, datetime.now(timezone.utc).replace(tzinfo=None), **{A.TENANT: "umbrella", A.COST_USD: None,
                                                                          A.COST_UNPRICED: True})  # fmt: skip
    writer.force_flush()
    config = tmp_path / "llmtrace.toml"
    config.write_text(GOOD)
    page = open_budgets_page(monkeypatch, db, config)
    table = page.dataframe[0].value
    assert list(table["budget"]) == ["tenant=acme", "tenant=*", "tenant=*"]
    assert list(table["key"]) == ["acme", "acme", "umbrella"] and list(table["unpriced"]) == [0, 0, 1]
    assert list(table["state"]) == ["ok", "exceeded", "unknown"] and table["spent"][0] == pytest.approx(1.0)
    assert table[["spent", "used", "projected"]].iloc[2].isna().all()  # unknown, drawn as "—", not $0 and 0 %
    columns = json.loads(page.dataframe[0].proto.columns)  # what the browser is told: money to four decimals
    assert all(columns[name]["type_config"]["format"] == "$%,.6f" for name in ("spent", "limit", "projected"))
    assert "tenant=* (acme)" in page.warning[0].value and "umbrella" not in page.warning[0].value
    assert any("count for nothing in these budgets" in info.value for info in page.info)



def test_the_budgets_page_says_how_far_past_and_names_the_worst_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "budgets.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    for i in range(12):  # tenant=* allows $1.00 a month each: all past it, t-11 twelve times over
        emit(provider, 1, tenant=f"t-{i:02}", cost=1.0 + i)
    writer.force_flush()
    config = tmp_path / "llmtrace.toml"
    config.write_text(GOOD)
    page = open_budgets_page(monkeypatch, db, config)
    table = page.dataframe[0].value
    assert table[table["key"] == "t-11"]["used"].iloc[0] == pytest.approx(12.0)  # as `llmtrace budgets` says it
    warning = page.warning[0].value
    assert warning.startswith("12 budget(s) past their warning threshold or limit: tenant=* (t-11), tenant=* (t-10)")
    assert warning.endswith(", and 2 more") and "(t-00)" not in warning

def test_money_in_messages_keeps_what_a_sub_cent_budget_needs() -> None:
    assert [budgets.usd(x) for x in (0, 0.0042, 0.000123, 0.5, 1234.5, 3.7e-05, 0.005)] == [
        "$0.00", "$0.0042", "$0.00012", "$0.50", "$1,234.50", "$0.000037", "$0.005"]  # never $3.7e-05
    exceeded = budgets.BudgetExceeded(budgets.Budget("global", None, "day", 0.005, 0.8, "block", "UTC"), None, 0.0069, None)
    assert "spent: $0.0069 of $0.005 per day" in str(exceeded)
    # Beside a limit it would read as: digits added until the two read apart, as far as a millionth of a dollar.
    pairs = [(0.0526, 0.05), (0.06475, 0.06), (1000.004, 1000), (0.05, 0.05), (2.0000001, 2), (0.049, 0.05)]
    assert [budgets.usd(spent, limit) for spent, limit in pairs] == ["$0.053", "$0.065", "$1,000.004", "$0.05", "$2.00", "$0.049"]
    exceeded = budgets.BudgetExceeded(budgets.Budget("tenant", "acme", "day", 0.05, 0.8, "block", "UTC"), "acme", 0.0526, None)
    assert "spent: $0.053 of $0.05 per day" in str(exceeded)


def test_two_budgets_alike_but_for_action_and_threshold_alert_each() -> None:
    from llmtrace.monitor import budget_alerts

    start = datetime(2026, 11, 24)
    alerting = budgets.Budget("tenant", "acme", "day", 0.001, warn_at=0.5)
    blocking = budgets.Budget("tenant", "acme", "day", 0.001, warn_at=0.9, action="block")
    ids = [a.alert_id for b in (alerting, blocking) for a in budget_alerts(b, "acme", 0.00095, start, start)]
    assert len(ids) == len(set(ids)) == 2  # each budget's own warning: neither is mistaken for the other's


def test_spend_past_the_warning_warns_and_past_the_limit_alerts_once_without_a_late_warning() -> None:
    from llmtrace.monitor import budget_alerts

    start = datetime(2026, 11, 24)
    budget = budgets.Budget("global", None, "day", 1.0, warn_at=0.8)
    assert budget_alerts(budget, None, 0.5, start, start) == []
    assert [a.kind for a in budget_alerts(budget, None, 0.85, start, start)] == ["budget_warning"]
    # Past the limit (read for the first time, or after the warning): the exceeded alert alone, not a warning with it.
    assert [a.kind for a in budget_alerts(budget, None, 1.2, start, start)] == ["budget_exceeded"]


def test_spend_that_adds_up_to_a_threshold_in_floats_has_reached_it() -> None:
    """Ten calls of $0.10 add up to 0.9999999999999999: they have spent a $1.00 budget, as its user counts."""
    from llmtrace.monitor import budget_alerts

    budget = budgets.Budget("global", None, "day", 1.0, warn_at=0.8)
    ten, eight = sum([0.1] * 10), sum([0.1] * 8)
    assert (ten < 1.0, eight < 0.8) == (True, True)  # the floats the store's sums give
    assert budgets.level(budget, ten) == "exceeded" and budgets.level(budget, eight) == "warning"
    assert budgets.level(budget, 0.79) is None
    start = datetime(2026, 11, 24)
    assert [a.kind for a in budget_alerts(budget, None, ten, start, start)] == ["budget_exceeded"]
    status = budgets.Status(budget, None, ten, start, None, None)
    assert status.state == "exceeded"


def test_budgets_that_differ_only_past_six_digits_have_names_of_their_own() -> None:
    million, more = (budgets.Budget("global", None, "month", limit) for limit in (1_000_000, 1_000_004))
    assert (million.name, more.name) == ("global month $1000000", "global month $1000004")
    assert budgets.Budget("tenant", "*", "day", 0.5).name == "tenant=* day $0.5"  # as before for limits {:g} wrote exactly


def test_a_retention_shorter_than_a_budgets_period_is_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Retention deletes spans at every merge: a month's cap over a day's retention would count one day of spend."""
    budgets.add(scope="global", period="day", limit_usd=10)  # a day's spend stays a day: nothing to say
    try:
        with llmtrace.testing.capture(store=True, db=str(tmp_path / "s.duckdb"), retention_days=1,
                                      budget_refresh_interval=3600, anomaly_detectors=[]):  # fmt: skip
            assert "retention_days" not in caplog.text
            monthly = budgets.add(scope="tenant", key="*", period="month", limit_usd=10, action="block")
            budgets.add(scope="user", key="*", period="day", limit_usd=1)
    finally:
        budgets.clear()
    told = [r.getMessage() for r in caplog.records if "retention_days = 1" in r.getMessage()]
    assert told == [
        f"llmtrace: retention_days = 1 deletes spans older than that, but the budget {monthly.name} counts what was spent "
        "over its month (up to 31 days): it will count less than was spent. Keep spans 31 days or more "
        "(retention_days = 31, or 0 to keep them all)"
    ]


def test_a_budget_declared_after_instrument_without_the_store_is_said_to_do_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        with llmtrace.testing.capture():  # store=False
            assert "budgets need the store" not in caplog.text
            budgets.add(scope="global", period="day", limit_usd=0.01, action="block")
    finally:
        budgets.clear()
    assert "llmtrace: budgets need the store (store=false): they are neither enforced nor alerted on" in caplog.text
