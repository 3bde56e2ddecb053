"""The llmtrace command over a real store."""

from __future__ import annotations

import importlib.metadata
import io
import json
import subprocess
import sys
import threading
import tomllib
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from llmtrace import dashboard, query
from llmtrace.cli import main
from llmtrace.demo import DemoRun, ProgressBar
from store_helpers import emit, emit_at, provider_with_store


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "cli.duckdb")
    provider, writer = provider_with_store(path, flush_interval=60)
    emit(provider, 3, tenant="acme", cost=0.5)
    emit(provider, 1, tenant="globex", cost=0.25)
    writer.force_flush()
    return path


def test_report_shows_a_tiny_known_cost_as_one_not_as_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "tiny.duckdb")
    provider, writer = provider_with_store(path, flush_interval=60)
    emit(provider, 1, tenant="embeddings", cost=3.7e-7)  # a short embedding call
    emit(provider, 1, tenant="chat", cost=0.0123456789)
    emit(provider, 1, tenant="\u6771\u4eac-\u652f\u5e97", cost=0.001)  # a Japanese tenant: two terminal columns a character
    writer.force_flush()
    assert main(["report", "--db", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    costs = {line.split()[0]: line.split()[6] for line in lines[1:]}
    assert costs == {"chat": "$0.012346", "embeddings": "$0.00000037", "\u6771\u4eac-\u652f\u5e97": "$0.001000"}
    # Every row as wide on a terminal as the header: the columns line up.
    assert {sum(2 if unicodedata.east_asian_width(c) == "W" else 1 for c in line) for line in lines} == {len(lines[0])}


def test_report_table_json_csv(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", db]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["tenant", "calls", "errors", "blocked_calls", "input_tokens", "output_tokens", "cost_usd",
                                "unpriced_calls", "p50_ms", "p99_ms"]
    assert table[1].split()[:2] == ["acme", "3"] and "$1.500000" in table[1]
    assert main(["report", "--db", db, "--by", "model", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["key"] == "gpt-4o-mini" and rows[0]["calls"] == 4 and rows[0]["cost_usd"] == pytest.approx(1.75)
    assert tuple(rows[0]) == query.SPEND_COLUMNS
    assert main(["report", "--db", db, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("key,calls,errors")


def test_a_missing_store_is_an_error_and_an_empty_window_says_so(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "typo" / "none.duckdb")
    (tmp_path / "a-file").write_text("")
    under_a_file = str(tmp_path / "a-file" / "x.duckdb")
    for command in (["report"], ["compact"]):  # a mistyped path is not an empty store, nor a new one
        for path in (missing, under_a_file):
            assert main([*command, "--db", path]) == 2
            assert f"no llmtrace store at {path}" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    assert main(["report", "--since", "7x", "--db", missing]) == 2
    assert "not a duration" in capsys.readouterr().err
    old = str(tmp_path / "old.duckdb")
    provider, writer = provider_with_store(old, flush_interval=60)
    emit_at(provider, datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=2))
    writer.shutdown()
    assert main(["report", "--db", old, "--since", "1h"]) == 0
    assert "No LLM calls in the last 1h" in capsys.readouterr().out
    assert main(["report", "--db", old, "--since", "1h", "--format", "csv"]) == 0
    empty_header = capsys.readouterr().out.splitlines()
    assert main(["report", "--db", db, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == empty_header[0] == ",".join(query.SPEND_COLUMNS) and len(empty_header) == 1


def test_python_dash_m_llmtrace_is_the_command(db: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmtrace", "report", "--db", db, "--format", "json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert {row["key"]: row["calls"] for row in json.loads(done.stdout)} == {"acme": 3, "globex": 1}
    failed = subprocess.run([sys.executable, "-m", "llmtrace", "report", "--since", "0d"], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.startswith("llmtrace: not a duration")  # the exit status goes through


def test_compact_and_prices(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compact", "--db", db]) == 0
    assert "merged" in capsys.readouterr().out
    assert main(["prices", "gpt-4o-mini"]) == 0
    assert "input" in capsys.readouterr().out
    assert main(["prices", "no-such-model"]) == 1


def test_prices_of_a_service_tier(capsys: pytest.CaptureFixture[str]) -> None:
    def rates(*argv: str) -> dict[str, float]:
        assert main(["prices", "gpt-5", *argv]) == 0
        lines = capsys.readouterr().out.splitlines()[1:]
        return {name: float(value) for name, value in (line.split()[:2] for line in lines) if name not in ("audio", "and")}

    from genai_prices import data_snapshot

    _, model = data_snapshot.get_snapshot().find_provider_model("gpt-5", None, "openai", None)
    flex = model.get_prices(datetime.now(timezone.utc), {"service_tier": "flex"})
    assert rates("--service-tier", "flex") == {
        "input": float(flex.input_mtok), "cache_read": float(flex.cache_read_mtok), "cache_write": float(flex.input_mtok),
        "output": float(flex.output_mtok), "reasoning": float(flex.output_mtok),
    }
    assert rates()["output"] != float(flex.output_mtok)


def test_prices_shows_audio_rates_or_says_there_are_none(capsys: pytest.CaptureFixture[str]) -> None:
    from genai_prices import data_snapshot

    _, model = data_snapshot.get_snapshot().find_provider_model("gpt-audio", None, "openai", None)
    listed = model.get_prices(datetime.now(timezone.utc))
    assert main(["prices", "gpt-audio"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ["input_audio", f"{float(listed.input_audio_mtok):g}"] in [line.split() for line in lines]
    assert ["output_audio", f"{float(listed.output_audio_mtok):g}"] in [line.split() for line in lines]
    assert main(["prices", "gpt-4o-audio-preview"]) == 0  # priced, but its audio tokens are not
    out = capsys.readouterr().out
    assert "input_audio" not in out and "a call with audio tokens is unpriced (cost unknown)" in out


def test_prices_shows_anthropics_one_hour_cache_write_rate(capsys: pytest.CaptureFixture[str]) -> None:
    from genai_prices import data_snapshot

    _, model = data_snapshot.get_snapshot().find_provider_model("claude-sonnet-4-5", None, "anthropic", None)
    listed = model.get_prices(datetime.now(timezone.utc))
    assert main(["prices", "claude-sonnet-4-5", "--provider", "anthropic"]) == 0
    rows = {line.split()[0]: line.split()[1].rstrip(",") for line in capsys.readouterr().out.splitlines()[1:]}
    one_hour = listed.cache_write_1h_mtok
    assert rows["cache_write_1h"] == f"{float(getattr(one_hour, 'base', one_hour)):g}" != rows["cache_write"]
    assert main(["prices", "gpt-4o"]) == 0  # one cache write rate: no line of its own
    assert "cache_write_1h" not in capsys.readouterr().out


def test_prices_says_which_context_and_provider_apply(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices", "gpt-5", "--service-tier", "flex"]) == 0
    assert capsys.readouterr().out.startswith("gpt-5 (openai, service tier flex), priced as")
    for tier in ("scale", "default"):  # tiers without prices of their own: the header must not claim them
        assert main(["prices", "gpt-5", "--service-tier", tier]) == 0
        assert f"(openai; service tier {tier}: no prices of its own, the standard ones)" in capsys.readouterr().out
    assert main(["prices", "claude-sonnet-4-5", "--provider", "openai"]) == 1  # an Anthropic model asked of OpenAI
    assert "it is priced for --provider anthropic" in capsys.readouterr().err
    for provider in ([], ["--provider", "Anthropic"]):  # no provider: the first price list that has the model
        assert main(["prices", "claude-sonnet-4-5", *provider]) == 0
        assert capsys.readouterr().out.startswith("claude-sonnet-4-5 (anthropic), priced as")
    assert main(["prices", "no-such-model-anywhere"]) == 1
    assert "No price known for 'no-such-model-anywhere' in any provider's price list." in capsys.readouterr().err


def test_prices_shows_fees_and_picks_the_provider_that_prices_the_model_as_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure's price list has DeepSeek's and xAI's models from theirs: without --provider, the provider itself is
    shown, or the one the user priced the model for; a fee per request or per search is part of a call's cost."""
    from genai_prices import data_snapshot

    _, sonar = data_snapshot.get_snapshot().find_provider_model("sonar", None, "perplexity", None)
    per_request = float(sonar.get_prices(datetime.now(timezone.utc)).requests_kcount)
    assert main(["prices", "sonar"]) == 0
    assert f"  and USD per 1,000 requests: {per_request:g}" in capsys.readouterr().out.splitlines()
    for model, provider in (("deepseek-chat", "deepseek"), ("grok-3", "x_ai")):
        assert main(["prices", model]) == 0
        assert capsys.readouterr().out.startswith(f"{model} ({provider}), priced as")
    (tmp_path / "llmtrace.toml").write_text('[provider_prices.deepseek."deepseek-chat"]\ninput_mtok = 0.1\noutput_mtok = 0.2\n\n'
                                            '[provider_prices."llm.internal"."my-model"]\ninput_mtok = 1\noutput_mtok = 2\n')
    monkeypatch.chdir(tmp_path)
    for model, provider, rate in (("deepseek-chat", "deepseek", "0.1"), ("my-model", "llm.internal", "1")):
        assert main(["prices", model]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{model} ({provider}), priced as {model} from override") and f"  input          {rate}\n" in out
    assert main(["prices", "deepseek-chat", "--provider", "deepseek", "--service-tier", "priority"]) == 0
    assert "service tier priority: an override is one price for every tier and speed" in capsys.readouterr().out


def test_prices_of_every_tier_and_speed_the_price_list_prices(capsys: pytest.CaptureFixture[str]) -> None:
    """The choices come from the price list, not a list of llmtrace's: a tier it prices at run time is shown too."""
    from genai_prices import data_snapshot

    variants = [(model.id, key, value) for provider in data_snapshot.get_snapshot().providers if provider.id in ("openai", "anthropic")
                for model in provider.models for variant in model.price_variants or () for key, value in variant.when.items()
                if key in ("service_tier", "speed")]  # fmt: skip
    assert {(key, value) for _, key, value in variants} >= {("service_tier", "flex"), ("speed", "fast")}
    for model, key, value in variants:
        assert main(["prices", model, f"--{key.replace('_', '-')}", value]) == 0
        assert f"{key.replace('_', ' ')} {value}" in capsys.readouterr().out.splitlines()[0]  # accepted, and named


def test_every_command_reads_the_store_and_settings_the_app_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "elsewhere" / "app.duckdb"
    provider, writer = provider_with_store(str(db), flush_interval=60)
    emit(provider, 3, tenant="acme", cost=0.5)
    emit_at(provider, datetime.utcnow() - timedelta(days=10), **{"llmtrace.tenant": "old"})
    writer.force_flush()
    (tmp_path / "llmtrace.toml").write_text(f"""
[llmtrace]
db = "{db}"
retention_days = 5

[prices."my-fine-tune"]
input_mtok = 1.5
output_mtok = 3

[[budgets]]
scope = "tenant"
key = "acme"
period = "month"
limit_usd = 10
""")  # the app's config, in the folder the commands run in (no --db given anywhere below)
    assert main(["report"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["acme", "3"]
    assert main(["budgets"]) == 0
    assert "$1.50" in capsys.readouterr().out  # acme's spend this month, from the app's store
    assert main(["prices", "my-fine-tune"]) == 0
    assert "override" in capsys.readouterr().out
    assert main(["compact"]) == 0
    assert "retention removed 1" in capsys.readouterr().out  # the config's 5 days


def test_compact_retention_zero_keeps_every_span(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compact", "--db", db, "--retention-days", "0"]) == 0
    assert "retention removed 0" in capsys.readouterr().out
    assert main(["report", "--db", db, "--format", "json"]) == 0
    assert sum(row["calls"] for row in json.loads(capsys.readouterr().out)) == 4
    for days in ("-1", "inf", "soon", "1.5", "1000000", "99999999999999"):
        with pytest.raises(SystemExit):  # argparse's own usage error
            main(["compact", "--db", db, "--retention-days", days])
        assert "not a whole number of days from 0 to 36,600" in capsys.readouterr().err
    assert main(["compact", "--db", db, "--retention-days", "36600"]) == 0  # the longest: a century back still merges
    assert "retention removed 0" in capsys.readouterr().out


@pytest.mark.parametrize("since", ["1e12w", "infd", "-5d", "0h"])
def test_a_duration_out_of_range_is_a_clear_error(db: str, since: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", db, f"--since={since}"]) == 2
    assert "not a duration" in capsys.readouterr().err


def _held_by_another_process(db: str, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time\ncon = duckdb.connect({db!r})\n"
                               f"print('held', flush=True)\ntime.sleep({seconds})\ncon.close()"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_compact_waits_a_moment_for_another_process_merging(db: str, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """An app's merge holds the database for a moment: a cron job's compact waits for it rather than failing."""
    from llmtrace import cli

    holder = _held_by_another_process(db, 1.5)
    assert main(["compact", "--db", db]) == 0
    holder.wait(30)
    assert "merged" in capsys.readouterr().out
    monkeypatch.setattr(cli, "COMPACT_WAIT_S", 0.3)
    holder = _held_by_another_process(db, 5)
    try:
        assert main(["compact", "--db", db]) == 1
    finally:
        holder.kill()
        holder.wait(30)
    assert "for over 0.3 s" in capsys.readouterr().err


def test_compact_of_a_damaged_database_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged = tmp_path / "damaged.duckdb"
    damaged.write_bytes(b"this is not a DuckDB file" * 100)
    assert main(["compact", "--db", str(damaged)]) == 2
    assert f"cannot merge into {damaged}" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["report"], ["compact"], ["prices"], ["budgets"], ["dashboard"], ["demo"]])
def test_help_prints_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llmtrace")
    if not command:  # the overview names every command with its one-line summary
        assert "% used" in out and all(name in out for name in ("report", "compact", "prices", "budgets", "dashboard", "demo"))


def test_demo_without_an_sdk_says_what_to_install_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDKs are extras: `pip install llmtrace` has neither."""
    monkeypatch.setitem(sys.modules, "anthropic", None)  # what an import of a package not installed does
    db = tmp_path / "demo.duckdb"
    assert main(["demo", "--no-dashboard", "--calls", "3", "--db", str(db)]) == 2
    assert ("llmtrace demo drives the real openai and anthropic SDKs, and anthropic is not installed: pip install "
            "'llmtrace[openai,anthropic]'") in capsys.readouterr().err  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_a_busy_port_and_bad_sizes_before_its_traffic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    def never(*args: object) -> None:
        raise AssertionError("the dashboard server was started")

    monkeypatch.setattr(dashboard.os, "execve", never)
    db = str(tmp_path / "demo.duckdb")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--calls", "5", "--db", db, "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert main(["dashboard", "--db", db, "--port", str(port)]) == 2  # said as plainly, not by Streamlit
        assert f"cannot serve the dashboard on 127.0.0.1:{port}" in capsys.readouterr().err
        monkeypatch.setenv("LLMTRACE_DASHBOARD_REFRESH", "abc")  # the page would take its default without a word
        assert main(["dashboard", "--db", db, "--port", str(port)]) == 2
        assert "llmtrace: LLMTRACE_DASHBOARD_REFRESH: 'abc' is not a number of seconds, 0 or more" in capsys.readouterr().err
        monkeypatch.delenv("LLMTRACE_DASHBOARD_REFRESH")
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in err and "choose another with --port" in err
    assert "calls through the real" not in err and not Path(db).exists()
    for option, value in (("--calls", "-5"), ("--concurrency", "0"), ("--calls", "many")):
        with pytest.raises(SystemExit):  # argparse's usage error
            main(["demo", "--no-dashboard", "--db", db, option, value])
        assert f"{value!r} is not a whole number, 1 or more" in capsys.readouterr().err
    for command, said in ((["demo", "--port", "99999"], "'99999' is not a whole number (a TCP port) from 1 to 65,535"),
                          (["dashboard", "--port", "0"], "'0' is not a whole number (a TCP port)"),
                          (["dashboard", "--refresh", "-5"], "'-5' is not a number of seconds, 0 or more"),
                          (["prices", "gpt-4o", "--service-tier", "flexx"], "'flexx' is not one of auto, default, ")):  # fmt: skip
        with pytest.raises(SystemExit):  # a usage error, before anything starts
            main(command)
        assert said in capsys.readouterr().err


def test_demo_progress_in_a_log_file() -> None:
    """Not a terminal: one line every tenth of the way, the last one saying how many calls failed."""
    out = io.StringIO()
    progress, run = ProgressBar(20, out, width=10), DemoRun()
    for call in range(20):
        run.record(ok=call != 7)
        progress(run)
    lines = out.getvalue().strip("\r\n").split("\n")
    assert len(lines) == 10
    assert lines[-1] == "\r  [##########] 20/20 calls, 1 failed"


def test_an_old_streamlit_is_refused_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older Streamlit starts and then fails on every page: the dashboard and the demo say so first."""
    def never(*args: object) -> None:
        raise AssertionError("the server was started")

    version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.40.2" if name == "streamlit" else version(name))
    monkeypatch.setattr(dashboard.os, "execve", never)
    monkeypatch.setattr(dashboard.subprocess, "Popen", never)
    db = str(tmp_path / "none.duckdb")
    assert main(["dashboard", "--db", db]) == 2
    assert main(["demo", "--calls", "5", "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.count("needs Streamlit 1.55 or newer, not 1.40.2: pip install -U 'llmtrace[dashboard]'") == 2
    assert "calls through the real" not in err  # refused before the demo's traffic, not after it
    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as project:
        extras = tomllib.load(project)["project"]["optional-dependencies"]
    assert extras["dashboard"] == [f"streamlit>={'.'.join(map(str, dashboard.MIN_STREAMLIT))}"]


def test_the_demo_in_an_apps_folder_leaves_that_apps_settings_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app's llmtrace.toml names its store, a budget that blocks, a webhook: the demo's simulated calls go to the
    demo's own store (the one it reports and serves), none is refused, and no alert is posted. A store the app's
    shell turned off is on for the demo: it said it had stored calls it had not."""
    monkeypatch.setenv("LLMTRACE_STORE", "off")
    from http.server import BaseHTTPRequestHandler, HTTPServer

    posted: list[str] = []

    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            posted.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "llmtrace.toml").write_text(f"""
[llmtrace]
db = "app.duckdb"

[alerts]
webhook_url = "http://127.0.0.1:{server.server_address[1]}/hook"

[[budgets]]
scope = "global"
period = "day"
limit_usd = 0.0001
action = "block"
""")
    try:
        assert main(["demo", "--calls", "30", "--no-dashboard", "--seed", "2"]) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    demo_store = tmp_path / ".llmtrace" / "llmtrace.duckdb"
    assert f"stored in {demo_store}" in out and "30 calls" in out
    assert query.span_count(db=str(demo_store))["spans"] == 30
    assert not (tmp_path / "app.duckdb").exists() and not posted
    window = query.TimeRange.last(timedelta(hours=1))
    assert query.summary(window, db=str(demo_store))["blocked_calls"] == 0
