"""Settings: ``instrument()`` arguments, then ``LLMTRACE_*``/``OTEL_*`` variables, then ``llmtrace.toml``.

Every option has one name, used as the keyword argument, as the key in the ``[llmtrace]`` table of the
config file, and (upper-cased, ``LLMTRACE_`` prefix) as the environment variable.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

DEFAULT_CONFIG_FILE = "llmtrace.toml"
# Spans waiting in memory for the store's writer (a disk or database fault holds them there), at most: ~2.3 kB each.
DEFAULT_MAX_BUFFERED_SPANS = 1_000_000
DEFAULT_INCLUDE_USAGE_HOSTS = ("api.openai.com", "eu.api.openai.com", "us.api.openai.com")
ANOMALY_DETECTORS = ("spend_spike", "prompt_growth", "duplicate_calls", "model_drift", "error_rate")
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
# Tables of llmtrace.toml whose keys are settings with a prefix: [alerts] webhook_url = alert_webhook_url.
_PREFIXED_TABLES = {"alerts": "alert_", "anomalies": "anomaly_"}
_PRICE_TABLES = {"prices": "model -> rates", "provider_prices": "provider -> model -> rates"}  # what each holds
_TABLES = ("llmtrace", *_PREFIXED_TABLES, *_PRICE_TABLES, "budgets")  # budgets: llmtrace.budgets reads them


class ConfigError(ValueError):
    """A setting is malformed; the message names where it came from."""


@dataclass(frozen=True)
class Settings:
    service_name: str | None = None
    otlp_endpoint: str | None = None
    otlp_protocol: str | None = None  # http/protobuf (default) or grpc
    # Seconds that exit (and uninstrument()) wait for the last OTLP export, at most: a dead collector must not hold
    # the app's exit for the exporter's whole retry window.
    otlp_shutdown_timeout: float = 2.0
    capture_content: bool = False
    # Hosts known to accept ``stream_options.include_usage``; others never see the field.
    include_usage_hosts: tuple[str, ...] = DEFAULT_INCLUDE_USAGE_HOSTS
    # ``host=provider`` pairs: OpenAI-compatible calls to a gateway, proxy or local server that fronts
    # a known provider are named (and priced) as that provider, e.g. ``llm-gateway.internal=openai``.
    provider_hosts: tuple[str, ...] = ()
    # Tenant/feature values allowed as metric labels; the top ``metric_tag_top_k`` seen are kept
    # too, everything else becomes ``__other__`` so metric cardinality stays bounded.
    metric_tag_allowlist: tuple[str, ...] = ()
    metric_tag_top_k: int = 20
    # Turn off the SDKs' own tracing (anthropic >= 2) so each call has exactly one span.
    disable_sdk_tracing: bool = True
    prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # model -> rates, for every provider
    # provider (a span's gen_ai.provider.name) -> model -> rates, for that provider's calls alone
    provider_prices: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    config_file: str | None = None
    # The embedded DuckDB store (turn off with store=false / LLMTRACE_STORE=off).
    store: bool = True
    db: str | None = None  # default ./.llmtrace/llmtrace.duckdb
    flush_interval: float = 2.0  # seconds until a span is visible to readers, at most
    retention_days: int = 0  # 0 keeps spans forever
    max_buffered_spans: int = DEFAULT_MAX_BUFFERED_SPANS  # beyond: new spans are dropped (counted and logged)
    # Budgets and alerts (``[alerts]`` keys of llmtrace.toml are these without ``alert_``).
    budget_refresh_interval: float = 2.0  # seconds between reads of the store's spend (off the request path)
    alert_webhook_url: str | None = None
    alert_webhook_timeout: float = 5.0
    # Anomaly detectors (``[anomalies]`` keys are these without ``anomaly_``).
    anomaly_detectors: tuple[str, ...] = ANOMALY_DETECTORS
    anomaly_interval: float = 60.0  # seconds between runs
    anomaly_recent_window: float = 3600.0  # "now": the last hour...
    anomaly_baseline_window: float = 7 * 86400.0  # ...against the week before it
    anomaly_min_calls: int = 20  # fewer calls than this (recent or baseline) decide nothing
    anomaly_spend_spike_factor: float = 3.0
    anomaly_spend_spike_min_usd: float = 1.0
    anomaly_prompt_growth: float = 0.5  # median input tokens up 50%
    anomaly_duplicate_count: int = 2  # the same request this many times...
    anomaly_duplicate_window: float = 5.0  # ...within this many seconds
    anomaly_error_rate: float = 0.1
    anomaly_rate_limit_rate: float = 0.2
    anomaly_rate_window: float = 900.0
    anomaly_require_pinned_models: bool = False

    def host_providers(self) -> dict[str, str]:
        """``provider_hosts`` as host -> provider (validated by ``load``)."""
        return dict(pair.split("=", 1) for pair in self.provider_hosts)


# Retention reaches back from now: past a century the cutoff leaves the calendar (and no merge could work).
MAX_RETENTION_DAYS = 100 * 366
_INT_MAXIMA = {"retention_days": MAX_RETENTION_DAYS}
_INT_MINIMA = {"max_buffered_spans": 1, "anomaly_duplicate_count": 2}  # a request sent once is not a duplicate
# Numbers with bounds beyond "positive": a share (error_rate = 10 meant 10 % and would never fire), a factor that is
# a rise, and time windows the calendar can hold (a year, for the anomaly windows).
_SHARES = ("anomaly_error_rate", "anomaly_rate_limit_rate")
_FLOAT_BOUNDS = {
    **{name: (0.0, 1.0, "a share from 0 to 1 (0.1 is 10 %)") for name in _SHARES},
    "anomaly_spend_spike_factor": (1.0, math.inf, "a factor above 1 (3 is three times the usual spend)"),
    **{name: (0.0, 366 * 86400.0, "a number of seconds, at most a year") for name in
       ("anomaly_interval", "anomaly_recent_window", "anomaly_baseline_window", "anomaly_rate_window", "anomaly_duplicate_window")},
    # Waited for by threads, whose waits refuse more than threading.TIMEOUT_MAX (~292 years): one past it ended the
    # store's writer or the budget monitor for good. A day is more than any of these needs.
    **{name: (0.0, 86400.0, "a number of seconds, at most a day (86400)") for name in
       ("flush_interval", "budget_refresh_interval", "alert_webhook_timeout", "otlp_shutdown_timeout")},
}  # fmt: skip

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off", ""}


def _check_provider_host(pair: str) -> None:
    """A pair that could never apply is refused: calls are matched by their URL's host alone, and the provider must be
    one whose price list llmtrace reads."""
    from .pricing import PROVIDERS

    host, _, provider = (part.strip() for part in pair.partition("="))
    if not host or not provider:
        raise _Refused("provider_hosts", f"{pair!r} is not host=provider (e.g. llm-gateway.internal=openai)")
    if "=" in provider or any(c.isspace() for c in provider):
        raise _Refused("provider_hosts", f"{pair!r} holds more than one pair: separate them with commas")
    bare = _bare_host(host)
    if bare != host:
        raise _Refused("provider_hosts", f"{pair!r}: give the host alone, without a scheme, port or path ({bare}={provider})")
    if provider not in PROVIDERS:
        raise _Refused("provider_hosts", f"{provider!r} is not a provider llmtrace prices ({', '.join(PROVIDERS)})")


def _bare_host(host: str) -> str:
    """``host`` without the scheme, port or path it may have been given with (calls are matched by their URL's host
    alone)."""
    if "/" not in host and not (host.count(":") == 1 and host.rpartition(":")[2].isdecimal()):
        return host
    netloc = host.split("://")[-1].split("/")[0]
    return netloc.rpartition(":")[0] if netloc.count(":") == 1 else netloc


def _check_usage_host(host: str) -> None:
    bare = _bare_host(host)
    if not bare or bare != host or any(c.isspace() for c in host):
        raise _Refused("include_usage_hosts", f"{host!r}: give each host alone, without a scheme, port or path"
                       + (f" ({bare})" if bare and bare != host else ""))  # fmt: skip


class _Refused(ValueError):
    """A setting's value refused by a check that knows its name, not where it came from (load says that)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _check_after_coercion(values: dict[str, Any]) -> None:
    for pair in values.get("provider_hosts", ()):
        _check_provider_host(pair)
    for host in values.get("include_usage_hosts", ()):
        _check_usage_host(host.strip())
    # OTLP's endpoints are URLs with a scheme for both protocols (the specification says so): "collector:4318"
    # would be taken, and then every export would fail.
    for name in ("alert_webhook_url", "otlp_endpoint"):
        url = values.get(name)
        if url and not url.startswith(("http://", "https://")):
            # A webhook's path is the secret of many receivers (Slack's): its host alone, in a message that may be logged.
            shown = url if name == "otlp_endpoint" or "/" not in url else url.split("/", 1)[0] + "/…"
            raise _Refused(name, f"{shown!r} is not an http:// or https:// URL")
    unknown_detectors = set(values.get("anomaly_detectors", ())) - set(ANOMALY_DETECTORS)
    if unknown_detectors:
        raise _Refused("anomaly_detectors", f"unknown {', '.join(sorted(unknown_detectors))} (known: {', '.join(ANOMALY_DETECTORS)})")
    protocol = values.get("otlp_protocol")
    if protocol is not None and protocol not in OTLP_PROTOCOLS:  # checked now, not once an exporter is made
        raise _Refused("otlp_protocol", f"the OTLP protocol must be one of {', '.join(OTLP_PROTOCOLS)}, got {protocol!r}")


def _coerce(name: str, raw: Any, default: Any, origin: str) -> Any:
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _BOOL_TRUE:
            return True
        if text in _BOOL_FALSE:
            return False
        raise ConfigError(f"{origin}: {name} must be true or false, got {raw!r}")
    if isinstance(default, float):
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: {name} must be a number, got {raw!r}") from None
        if isinstance(raw, bool) or not 0 < number < math.inf:
            raise ConfigError(f"{origin}: {name} must be a positive number, got {raw!r}")
        low, high, what = _FLOAT_BOUNDS.get(name, (0.0, math.inf, ""))
        if not low < number <= high:
            raise ConfigError(f"{origin}: {name} must be {what}, got {raw!r}")
        return number
    if isinstance(default, int):
        # Not int(raw): it would make 1.5 days 1 and true 1 without a word.
        value = raw if type(raw) is int else int(raw) if isinstance(raw, str) and raw.strip().isdecimal() else None
        minimum, maximum = _INT_MINIMA.get(name, 0), _INT_MAXIMA.get(name)
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum:,}" if maximum is not None else f"{minimum} or more"
            raise ConfigError(f"{origin}: {name} must be a whole number {bounds}, got {raw!r}")
        return value
    if isinstance(default, tuple):
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, (list, tuple)) and all(isinstance(x, str) for x in raw):
            return tuple(raw)
        raise ConfigError(f"{origin}: {name} must be a list of strings, got {raw!r}")
    if name in _PRICE_TABLES:
        shape = _PRICE_TABLES[name]
        if isinstance(raw, str):  # LLMTRACE_PRICES, LLMTRACE_PROVIDER_PRICES: the same table, as JSON
            try:
                raw = json.loads(raw)
            except ValueError as exc:
                raise ConfigError(f"{origin}: {name} must be JSON of {shape}: {exc}") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{origin}: {name} must be a table of {shape}, got {raw!r}")
        from .pricing import check_prices

        try:
            check_prices(raw, by_provider=name == "provider_prices")
        except ValueError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
        return raw
    if raw is not None and not isinstance(raw, str):
        raise ConfigError(f"{origin}: {name} must be a string, got {raw!r}")
    return raw


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """A config file's text and its tables; every way it can be unreadable is a ConfigError naming it."""
    try:
        text = path.read_bytes().decode("utf-8")
        return text, tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (TOML files are UTF-8): {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None


def _read_file(path: Path) -> dict[str, tuple[Any, str]]:
    """Setting name -> (value, the table it came from)."""
    data = read_toml(path)[1]
    unknown_tables = sorted(set(data) - set(_TABLES))
    if unknown_tables:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown_tables)} (known: {', '.join(_TABLES)})")
    section = data.get("llmtrace", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [llmtrace] must be a table")
    result = {key: (value, "llmtrace") for key, value in section.items()}
    for table, prefix in _PREFIXED_TABLES.items():
        values = data.get(table, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{table}] must be a table")
        unknown = sorted(k for k in values if prefix + k not in Settings.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} in [{table}]")
        for key, value in values.items():
            _put_once(path, result, prefix + key, value, table, f"[{table}] {key}")
    for table in _PRICE_TABLES:
        if table in data:
            _put_once(path, result, table, data[table], table, f"[{table}]")
    return result


def _put_once(path: Path, result: dict[str, tuple[Any, str]], name: str, value: Any, table: str, where: str) -> None:
    # One setting given twice in a file ([llmtrace] alert_webhook_url and [alerts] webhook_url): one would be
    # dropped without a word.
    if name in result:
        raise ConfigError(f"{path}: {where} sets {name}, which [{result[name][1]}] sets too: give it once")
    result[name] = (value, table)


def config_path(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file in force: the one named, else ``$LLMTRACE_CONFIG`` (or ``$LLMTRACE_CONFIG_FILE``), else
    ``./llmtrace.toml`` if present."""
    env = os.environ if environ is None else environ
    named = explicit or env.get("LLMTRACE_CONFIG") or env.get("LLMTRACE_CONFIG_FILE")  # the second: LLMTRACE_<NAME>
    if named:
        return Path(named)
    return Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None


def db_setting(environ: Mapping[str, str] | None = None) -> str | None:
    """The store path an app here would be given, read alone: ``$LLMTRACE_DB``, else the config file's
    ``[llmtrace] db``. The other settings are not checked (a reader must not fail for them); a config file that cannot
    be read, or a ``db`` that is no path, is a ConfigError: where the store is cannot be told."""
    env = os.environ if environ is None else environ
    if env.get("LLMTRACE_DB", "").strip():
        return env["LLMTRACE_DB"]
    path = config_path(None, env)
    section = read_toml(path)[1].get("llmtrace") if path is not None else None
    db = section.get("db") if isinstance(section, dict) else None
    if db is not None and not isinstance(db, str):
        raise ConfigError(f"{path} [llmtrace]: db must be a path (a string), got {db!r}")
    return db


def load(options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from ``options`` > environment > config file > defaults."""
    env = os.environ if environ is None else environ
    names = {f.name: f for f in fields(Settings)}
    unknown = set(options) - set(names)
    if unknown:
        raise ConfigError(f"instrument(): unknown option(s) {', '.join(sorted(unknown))}")

    config_file = config_path(options.get("config_file"), env)
    file_values = _read_file(config_file) if config_file else {}
    bad = set(file_values) - set(names) - {"config_file"}
    if bad:
        raise ConfigError(f"{config_file}: unknown setting(s) {', '.join(sorted(bad))} in [llmtrace]")

    # otlp_endpoint has no standard default here: without it the OTEL_EXPORTER_OTLP_* variables configure export
    # themselves (llmtrace.export.destinations), each signal its own.
    std_env = {"service_name": env.get("OTEL_SERVICE_NAME")}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}  # where each value came from, for the checks below
    for name, f in names.items():
        default = Settings.__dataclass_fields__[name].default
        if default is not None and not isinstance(default, (bool, int, float, str, tuple)):
            default = {}
        env_name = "LLMTRACE_" + name.upper()
        if name in options and options[name] is not None:
            origins[name] = "instrument()"
            values[name] = _coerce(name, options[name], default, origins[name])
        elif env.get(env_name) is not None and (env[env_name].strip() or isinstance(default, tuple)):
            # Empty is unset (compose and Kubernetes files leave variables empty), except for a list: none.
            origins[name] = env_name
            values[name] = _coerce(name, env[env_name], default, env_name)
        elif std_env.get(name):
            values[name] = std_env[name]
        elif name in file_values:
            value, table = file_values[name]
            origins[name] = f"{config_file} [{table}]"
            values[name] = _coerce(name, value, default, origins[name])
    if config_file:
        values["config_file"] = str(config_file)
    try:
        _check_after_coercion(values)
    except _Refused as refused:
        raise ConfigError(f"{origins[refused.name]}: {refused.name}: {refused}") from None
    # Hosts as a call's URL has them (lower case): "LLM-Gateway.internal" would never match.
    values["provider_hosts"] = tuple(
        f"{host.strip().lower()}={provider.strip()}" for host, _, provider in (pair.partition("=") for pair in values.get("provider_hosts", ()))
    )
    # Hosts named here come beside the ones known to accept the field, never instead: naming a gateway must not
    # cost OpenAI's own streams their usage.
    named = (host.strip().lower() for host in values.get("include_usage_hosts", ()))
    values["include_usage_hosts"] = tuple(dict.fromkeys((*DEFAULT_INCLUDE_USAGE_HOSTS, *named)))
    return Settings(**values)
