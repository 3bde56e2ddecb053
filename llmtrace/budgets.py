"""Budgets: a limit on spend per scope and key over a period, declared in ``llmtrace.toml`` or in code.

    [[budgets]]
    scope = "tenant"        # global | tenant | user | feature | model
    key = "acme"            # or "*" for each key separately
    period = "day"          # day | week | month (calendar, in `timezone`) | 24h | 7d (rolling)
    limit_usd = 50.0
    warn_at = 0.8
    action = "alert"        # alert | block
    timezone = "UTC"        # for calendar periods

    llmtrace.budgets.add(scope="tenant", key="*", period="day", limit_usd=50)

``status()`` says what each budget has spent from the store, and where the period is heading.
A ``model`` budget limits the model the app asks for (the request model, known before the call).
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import attributes as A
from .config import ConfigError, read_toml

if TYPE_CHECKING:
    from . import query  # at run time imported where used: it loads DuckDB, which `import llmtrace` must not

SCOPES = ("global", "tenant", "user", "feature", "model")
PERIODS = ("day", "week", "month", "24h", "7d")
ACTIONS = ("alert", "block")
_ROLLING = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
# The most whole days each period spans: a shorter retention deletes spend a budget still counts.
PERIOD_DAYS = {"day": 1, "week": 7, "month": 31, "24h": 1, "7d": 7}
_FIELDS = ("scope", "key", "period", "limit_usd", "warn_at", "action", "timezone")
_REQUIRED = ("scope", "period", "limit_usd")
EACH = "*"
# The span attribute each scope reads on the request path, and the store column it groups by.
SCOPE_ATTRIBUTES = {"tenant": A.TENANT, "user": A.USER_ID, "feature": A.FEATURE, "model": A.REQUEST_MODEL}
SCOPE_DIMENSIONS = {"tenant": "tenant", "user": "user", "feature": "feature", "model": "request_model"}


def reached(spent: float, amount: float) -> bool:
    """Whether ``spent`` is at ``amount`` or past it. Spend is a sum of floats, in which ten calls of $0.10 make
    0.9999999999999999: what differs from the amount only in its last bits has reached it, as its user counts."""
    return spent >= amount or math.isclose(spent, amount, rel_tol=1e-9)


def level(budget: Budget, spent: float) -> str | None:
    """``exceeded`` at the budget's limit or past it, ``warning`` at its warning threshold or past it, else None."""
    if reached(spent, budget.limit_usd):
        return "exceeded"
    if reached(spent, budget.warn_at * budget.limit_usd):
        return "warning"
    return None


def usd(amount: float, beside: float | None = None) -> str:
    """Money in messages: in cents, or to two significant digits below a cent (half a cent is not "$0.01"), never
    in scientific notation ($0.000037, not $3.7e-05: these messages reach people, in chat and in logs). ``beside``: an
    amount shown next to this one (a budget's limit): where the two differ, digits are added until they read apart
    ("$0.053 of $0.05", not "$0.05 of $0.05"; up to a millionth of a dollar)."""
    text = _money(amount)
    if beside is not None and amount != beside and text == _money(beside):
        for decimals in range(3, 7):
            closer = f"${amount:,.{decimals}f}"
            if closer != f"${beside:,.{decimals}f}":
                return closer
    return text


def _money(amount: float) -> str:
    if abs(amount) >= 0.01 or amount == 0:
        return f"${amount:,.2f}"
    return f"${amount:.{1 - math.floor(math.log10(abs(amount)))}f}".rstrip("0")


class BudgetExceeded(Exception):
    """A ``block`` budget is spent: the call was not sent to the provider.

    ``period_end`` (UTC) is when a calendar period starts over; None for rolling 24h/7d windows.
    """

    def __init__(self, budget: Budget, key: str | None, spent_usd: float, period_end: datetime | None) -> None:
        self.budget = budget
        self.scope = budget.scope
        self.key = key
        self.limit_usd = budget.limit_usd
        self.spent_usd = spent_usd
        self.period_end = period_end
        target = "global" if key is None else f"{budget.scope}={key}"
        until = f"until {period_end:%Y-%m-%d %H:%M} UTC" if period_end else f"over the last {budget.period}"
        super().__init__(
            f"llmtrace budget for {target} is spent: {usd(spent_usd, budget.limit_usd)} of {usd(budget.limit_usd)} per "
            f"{budget.period} ({until}); the call was not sent"
        )


@dataclass(frozen=True)
class Budget:
    scope: str
    key: str | None  # an exact key, "*" for each key separately, None for the global scope
    period: str
    limit_usd: float
    warn_at: float = 0.8
    action: str = "alert"
    timezone: str = "UTC"

    @property
    def target(self) -> str:
        """What it limits: ``global``, ``tenant=acme``, ``tenant=*``."""
        return "global" if self.scope == "global" else f"{self.scope}={self.key}"

    @property
    def name(self) -> str:
        # 15 significant digits: every limit a user writes, exactly ("{:g}" made $1,000,004 "$1e+06", the name of $1,000,000).
        return f"{self.target} {self.period} ${self.limit_usd:.15g}"

    @property
    def rolling(self) -> bool:
        """A window that moves with the clock (24h, 7d): it never starts over, so it has no period end."""
        return self.period in _ROLLING

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """The current period as naive UTC datetimes (how the store keeps time): [start, end)."""
        if self.rolling:
            return now - _ROLLING[self.period], now
        local = now.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(self.timezone))
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == "week":
            start -= timedelta(days=start.weekday())  # weeks start on Monday
        elif self.period == "month":
            start = start.replace(day=1)
        end = _next_period_start(start, self.period)
        return _utc(start), _utc(end)


def _next_period_start(start: datetime, period: str) -> datetime:
    if period == "day":
        naive = start.replace(tzinfo=None) + timedelta(days=1)
    elif period == "week":
        naive = start.replace(tzinfo=None) + timedelta(days=7)
    else:
        naive = (start.replace(tzinfo=None, day=28) + timedelta(days=4)).replace(day=1)
    return naive.replace(tzinfo=start.tzinfo)  # local midnight again, across a DST change too


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None)


# --- declaring ---------------------------------------------------------------------------------------

_lock = threading.Lock()
_declared: list[Budget] = []
# Told when code declares or clears budgets (the running monitor picks them up at once).
_listeners: list[Callable[[], None]] = []


def add(
    *,
    scope: str,
    period: str,
    limit_usd: float,
    key: str | None = None,
    warn_at: float = 0.8,
    action: str = "alert",
    timezone: str = "UTC",
) -> Budget:
    """Declare a budget in code; raises ``llmtrace.ConfigError`` for a malformed one."""
    budget = _validated({"scope": scope, "key": key, "period": period, "limit_usd": limit_usd, "warn_at": warn_at,
                         "action": action, "timezone": timezone}, "llmtrace.budgets.add()")
    with _lock:
        _declared.append(budget)
    _changed()
    return budget


def declared() -> tuple[Budget, ...]:
    with _lock:
        return tuple(_declared)


def clear() -> None:
    with _lock:
        _declared.clear()
    _changed()


def on_change(listener: Callable[[], None] | None) -> None:
    """Call ``listener`` whenever code declares or clears budgets (one listener: the monitor's)."""
    _listeners[:] = [listener] if listener is not None else []


def _changed() -> None:
    for listener in list(_listeners):
        listener()


def load_file(path: str | os.PathLike[str]) -> list[Budget]:
    """The ``[[budgets]]`` of a config file; every error names the file, the line and the field."""
    path = Path(path)
    text, data = read_toml(path)
    tables = data.get("budgets", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: `budgets` must be an array of tables ([[budgets]])")
    budgets = []
    for index, table in enumerate(tables):
        lines = _table_lines(text, index)
        budgets.append(_validated(table, str(path), lambda field: lines.get(field, lines.get("", 0))))
    return budgets


def _table_lines(text: str, index: int) -> dict[str, int]:
    """Line numbers of the ``index``-th ``[[budgets]]`` header ("") and of each field under it."""
    lines: dict[str, int] = {}
    seen = -1
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            if seen == index:
                break
            if re.fullmatch(r"\[\[\s*budgets\s*\]\](\s*#.*)?", stripped):
                seen += 1
                if seen == index:
                    lines[""] = number
            continue
        if seen == index and (match := re.match(r"([A-Za-z_][\w-]*)\s*=", stripped)):
            lines.setdefault(match.group(1), number)
    return lines


def _validated(raw: Mapping[str, Any], origin: str, line_of: Any = None) -> Budget:
    def fail(field: str, message: str) -> ConfigError:
        line = line_of(field) if line_of else 0
        where = f"{origin}, line {line}" if line else origin  # 0: not found (budgets = [{...}] written inline)
        return ConfigError(f"{where}: budget field `{field}`: {message}")

    if not isinstance(raw, Mapping):
        raise fail("", "each [[budgets]] entry must be a table")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise fail(unknown[0], f"unknown field (known: {', '.join(_FIELDS)})")
    missing = [field for field in _REQUIRED if raw.get(field) is None]
    if missing:
        raise fail(missing[0], f"missing (every budget has {', '.join(_REQUIRED)})")
    scope = raw.get("scope")
    if scope not in SCOPES:
        raise fail("scope", f"{scope!r} is not one of {', '.join(SCOPES)}")
    key = raw.get("key")
    if scope == "global":
        if key not in (None, EACH):
            raise fail("key", "a global budget has no key")
        key = None
    elif not isinstance(key, str) or not key:
        raise fail("key", f'a {scope} budget needs a key: the {scope} it limits, or "*" for each {scope}')
    period = raw.get("period")
    if period not in PERIODS:
        raise fail("period", f"{period!r} is not one of {', '.join(PERIODS)}")
    limit = raw.get("limit_usd")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit < float("inf"):
        raise fail("limit_usd", f"must be a positive number of USD, got {limit!r}")
    warn_at = raw.get("warn_at", 0.8)
    if isinstance(warn_at, bool) or not isinstance(warn_at, (int, float)) or not 0 < warn_at <= 1:
        raise fail("warn_at", f"must be a fraction of the limit in (0, 1], got {warn_at!r}")
    action = raw.get("action", "alert")
    if action not in ACTIONS:
        raise fail("action", f"{action!r} is not one of {', '.join(ACTIONS)}")
    zone = raw.get("timezone", "UTC")
    try:
        ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError):
        raise fail("timezone", f"unknown time zone {zone!r} (use an IANA name such as Europe/Paris)") from None
    return Budget(str(scope), key, str(period), float(limit), float(warn_at), str(action), str(zone))


# --- status --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    budget: Budget
    key: str | None  # for "*" budgets, the key this row is about
    spent_usd: float
    period_start: datetime
    period_end: datetime | None  # None for a rolling window
    projected_usd: float | None  # at this pace, by the end of the period
    unpriced_calls: int = 0  # calls under this budget with no known price: spent_usd leaves them out

    @property
    def used(self) -> float:
        return self.spent_usd / self.budget.limit_usd

    @property
    def state(self) -> str:
        # Never "ok" at a silent $0.
        return level(self.budget, self.spent_usd) or ("unknown" if self.unpriced_calls and not self.spent_usd else "ok")

    def known(self, figure: float | None) -> float | None:
        """A figure of this row's spend (spent, used, projected), or None while the spend is unknown: never $0 or 0 %."""
        return None if self.state == "unknown" else figure


def status(budgets: tuple[Budget, ...] | list[Budget], *, db: query.Store = None, now: datetime | None = None) -> list[Status]:
    """Each budget's spend this period from the store (one row per key for "*" budgets)."""
    from . import query

    now = now or query.TimeRange.last(timedelta(0)).since
    windows = [budget.window(now) for budget in budgets]
    # A second past now: every call in the store, the ones that began at this instant too.
    questions = [spend_question(budget, start, now + timedelta(seconds=1)) for budget, (start, _) in zip(budgets, windows)]
    with query.open_store(db) as con:
        spends = query.budget_spend(questions, db=con)
        unpriced = query.budget_unpriced_calls(questions, db=con)
    rows = []
    for budget, (start, end), spend, unpriced_by_key in zip(budgets, windows, spends, unpriced):
        elapsed = (now - start).total_seconds()
        if budget.key != EACH and not spend:
            spend = {budget.key: 0.0}
        for key, spent in sorted(spend.items(), key=lambda item: (-item[1], str(item[0]))):  # the biggest spenders first
            # A rolling window has no end to project to: its spend so far is all there is.
            projected = None if budget.rolling or elapsed <= 0 else spent / elapsed * (end - start).total_seconds()
            rows.append(Status(budget, key, spent, start, None if budget.rolling else end, projected,
                               unpriced_by_key.get(key, 0)))  # fmt: skip
    return rows


def unpriced_note(rows: list[Status]) -> str | None:
    """What the budgets cannot count: calls under them with no known price."""
    if not any(row.unpriced_calls for row in rows):
        return None
    return ("Calls with no known price (the unpriced column) count for nothing in these budgets; llmtrace report shows "
            "them by key; add prices with [prices] in llmtrace.toml")


def spend_question(budget: Budget, since: datetime, until: datetime) -> tuple[str | None, str | None, datetime, datetime]:
    """What to ask ``query.budget_spend`` for this budget's calls that began at ``since`` or later and ended by
    ``until``."""
    dimension = None if budget.scope == "global" else SCOPE_DIMENSIONS[budget.scope]
    key = None if budget.key == EACH else budget.key
    return dimension, key, since, until
