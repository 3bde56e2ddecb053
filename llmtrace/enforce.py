"""``block`` budgets on the request path: refuse a call before it is sent when its budget is spent.

What a budget has spent, as this process sees it:

    the store's figure at the last refresh (the monitor thread reads it, off the request path)
  + what this process's calls cost since that refresh
  + reservations of this process's calls still in flight, at their worst case (``max_tokens`` at the
    model's dearest output rate), replaced by their real cost when they end.

The request path takes one short lock (no I/O, no price lookup beyond the cached one) and only when a
``block`` budget applies to the call. Across processes, what others spent reaches this one at its next
refresh after they wrote it: the overspend bound is documented in the README ("Budgets").
"""

from __future__ import annotations

import threading
from time import time as _epoch_now
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from .budgets import EACH, SCOPE_ATTRIBUTES, Budget, BudgetExceeded, reached
from .store.files import utc_now

# A budget (by its token: hashing a Budget per call costs microseconds) and the key a call counts
# against (None: global).
Slot = tuple[int, "str | None"]


class Hold:
    """What an admitted call reserved, released when it ends."""

    __slots__ = ("slots", "amount")

    def __init__(self, slots: list[Slot], amount: float) -> None:
        self.slots = slots
        self.amount = amount


@dataclass(frozen=True)
class Snapshot:
    """What the guard had counted when a refresh began, and the windows the refresh must read."""

    finished: dict[Slot, float]
    windows: dict[Budget, tuple[datetime, datetime]]  # naive UTC [start, now]
    tokens: dict[Budget, int]


class SpendGuard:
    def __init__(self, budgets: tuple[Budget, ...] | list[Budget] = ()) -> None:
        # Re-entrant, as a guard: a stream's finalizer (which settles its hold) run on a thread inside admit() must
        # not wait for that thread. Streams the garbage collector frees end on a thread of their own (llmtrace.stream).
        self._lock = threading.RLock()
        self._finished: dict[Slot, float] = {}  # cost of this process's calls that ended (this period, for calendar ones)
        self._held: dict[Slot, float] = {}  # reservations of calls in flight
        # The store's figure minus ``_finished`` when it was read. Replaced whole, never changed in place: a refresh
        # builds the next one outside the lock (a "*" budget can have 10^5 keys), then swaps it in.
        self._base: dict[Slot, float] = {}
        # (token, budget, the span attribute it reads or None for global)
        self._rules: tuple[tuple[int, Budget, str | None], ...] = ()
        self._tokens: dict[Budget, int] = {}  # every budget ever enforced keeps its token (and its counts)
        self._period: dict[int, tuple[datetime, float]] = {}  # calendar budgets: (start, end as epoch)
        self.set_budgets(budgets)

    @property
    def budgets(self) -> tuple[Budget, ...]:
        return tuple(budget for _, budget, _ in self._rules)

    def set_budgets(self, budgets: tuple[Budget, ...] | list[Budget]) -> None:
        """Enforce these (``block`` ones only); counts kept for budgets that stay."""
        blocking = tuple(dict.fromkeys(b for b in budgets if b.action == "block"))
        now = utc_now()
        with self._lock:
            for budget in blocking:
                token = self._tokens.setdefault(budget, len(self._tokens))
                if token not in self._period and budget.period in ("day", "week", "month"):
                    self._period[token] = _period_of(budget, now)
            self._rules = tuple((self._tokens[b], b, SCOPE_ATTRIBUTES.get(b.scope)) for b in blocking)

    # --- the request path -----------------------------------------------------------------------

    def admit(self, attrs: Mapping[str, Any], worst_cost: Callable[[], float]) -> Hold | BudgetExceeded | None:
        """Reserve the call's worst case against every budget it counts against, or say which is spent."""
        if not self._rules:
            return None
        slots: list[Slot] = []
        applying: list[Budget] = []
        for token, budget, attribute in self._rules:
            if attribute is None:
                key = None
            else:
                key = attrs.get(attribute)
                if key is None or (budget.key != EACH and key != budget.key):
                    continue
            slots.append((token, key))
            applying.append(budget)
        if not slots:
            return None
        amount = worst_cost()
        now = _epoch_now()
        with self._lock:
            for slot, budget in zip(slots, applying):
                period = self._period.get(slot[0])
                if period is not None and now >= period[1]:
                    period = self._roll_over(slot[0], budget)
                spent = self._spent(slot)
                if reached(spent, budget.limit_usd):
                    end = datetime.fromtimestamp(period[1], timezone.utc) if period else None
                    return BudgetExceeded(budget, slot[1], spent, end)
            held = self._held
            for slot in slots:
                held[slot] = held.get(slot, 0.0) + amount
        return Hold(slots, amount)

    def settle(self, hold: Hold, cost: float | None) -> None:
        """The call ended: its reservation becomes its real cost (0 when it failed or is unpriced)."""
        with self._lock:
            for slot in hold.slots:
                self._held[slot] = self._held.get(slot, 0.0) - hold.amount
                if cost:
                    self._finished[slot] = self._finished.get(slot, 0.0) + cost

    def _spent(self, slot: Slot) -> float:
        return self._base.get(slot, 0.0) + self._finished.get(slot, 0.0) + self._held.get(slot, 0.0)

    def _roll_over(self, token: int, budget: Budget) -> tuple[datetime, float]:
        """A calendar period ended: what was spent before no longer counts, by this process or (as the store
        said) by any other (lock held)."""
        period = self._period[token] = _period_of(budget, utc_now())
        # Every key of the budget starts from nothing, and the keys of the period that ended are forgotten (a "*"
        # budget meets new users every day): a refresh that began before the roll-over is dropped as stale.
        self._base = {slot: figure for slot, figure in self._base.items() if slot[0] != token}
        self._finished = {slot: cost for slot, cost in self._finished.items() if slot[0] != token}
        return period

    def after_fork_in_child(self) -> None:
        # Calls the parent had in flight end there, not here: their reservations would never be released.
        self._lock = threading.RLock()
        self._held = {}

    # --- the monitor's refresh (off the request path) -------------------------------------------

    def snapshot(self) -> Snapshot:
        """Taken before the refresh flushes this process's spans: everything counted here is in the store after."""
        now = utc_now()
        epoch = _epoch_now()
        with self._lock:
            windows = {}
            for token, budget, _ in self._rules:
                period = self._period.get(token)
                if period is not None and epoch >= period[1]:
                    # Ended with no call since (a call's admit() rolls it over): the store must be read, and the
                    # alerts judged, for the new period, not the one that ended.
                    period = self._roll_over(token, budget)
                windows[budget] = (period[0] if period else budget.window(now)[0], now)
            return Snapshot(dict(self._finished), windows, dict(self._tokens))

    def refresh(self, snapshot: Snapshot, figures: Mapping[Budget, Mapping[str | None, float]]) -> None:
        """The store's figures for the snapshot's windows: they replace what was counted up to the snapshot, and
        this process keeps counting only what ended since (so its counts never outgrow the keys active between
        two refreshes, whatever the window). Built outside the lock, swapped in under it: the request path waits
        for no walk over the store's keys."""
        with self._lock:
            current = self._base
            periods = dict(self._period)
        base = dict(current)
        refreshed: set[int] = set()
        for budget, spend in figures.items():
            token = snapshot.tokens[budget]
            period = periods.get(token)
            if period is not None and period[0] != snapshot.windows[budget][0]:
                continue  # the period rolled over while the store was read: that figure is stale
            refreshed.add(token)
            for slot in [slot for slot in base if slot[0] == token]:
                del base[slot]  # a key the store no longer names (its spend left the window) is forgotten
            for key, figure in spend.items():
                base[(token, key)] = figure
        with self._lock:
            if self._base is not current:
                return  # a period rolled over meanwhile: the next refresh reads it anew
            self._base = base
            finished: dict[Slot, float] = {}
            for slot, cost in self._finished.items():
                if slot[0] in refreshed:
                    cost -= snapshot.finished.get(slot, 0.0)  # the store's figure holds what had ended by the snapshot
                if cost > 0.0:
                    finished[slot] = cost
            self._finished = finished


def _period_of(budget: Budget, now: datetime) -> tuple[datetime, float]:
    start, end = budget.window(now)
    return start, end.replace(tzinfo=timezone.utc).timestamp()
