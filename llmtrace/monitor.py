"""The monitor thread: budgets and anomalies, evaluated against the store, off the request path.

Every ``budget_refresh_interval`` seconds it (1) notes what the spend guard has counted, (2) has this
process's store writer write its buffered spans, (3) reads every budget's spend from the store, which
then includes those spans and everything other processes wrote (or reuses the last figures when nothing
has been written since they were read), (4) hands the figures to the guard, and (5) fires the budget
alerts that are due. Every ``anomaly_interval`` seconds it runs the anomaly detectors too, unless another
process writing the same store ran them within that interval (they read the whole store, so one run
serves every process). Besides, ``instrument()`` and ``llmtrace.budgets.add()`` of a ``block`` budget read the
budgets' spend once on the app's thread, so that block budgets hold from the next call (``add()`` within a bounded
wait, and leaving alerts to the monitor thread); one round runs at a time. Every failure is contained and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from . import budgets, later
from ._fork import background_work
from ._guard import Fault, internal_errors
from .alerts import Alert, Alerter
from .budgets import EACH, Budget, usd
from .config import Settings
from .enforce import SpendGuard
from .store.files import claim_round, release_round, utc_now

if TYPE_CHECKING:
    from .query import BudgetQuestion  # query loads DuckDB: imported when first needed, in the monitor thread

logger = logging.getLogger("llmtrace")

# How long budgets.add() waits, at most, for a round already reading the store, and again for this process's spans to
# be written, before it returns with the store's figures not yet read.
ADD_WAIT_S = 5.0


class Monitor:
    def __init__(
        self,
        settings: Settings,
        writer: Any,
        alerter: Alerter,
        file_budgets: list[Budget],
        guard: SpendGuard | None = None,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.alerter = alerter
        self.guard = guard
        self.db = str(writer.paths.db)
        self._file_budgets = tuple(file_budgets)
        self._wake = threading.Event()
        self._stopped = threading.Event()
        # One round at a time: add() runs one on the app's thread beside the monitor thread's (two refreshes of the
        # guard overlapping would count the calls between their snapshots twice).
        self._rounds = threading.Lock()
        self._next_anomaly_run = 0.0
        # Budget figures reused while nothing is written to the store: an idle process then does not open
        # DuckDB every round (~20 ms of CPU each).
        self._last_spend: _SpendRead | None = None
        self._thread: threading.Thread | None = None
        self._fault = Fault(
            "llmtrace: budgets and alerts cannot use the store (%s); the app is not affected, block budgets keep "
            "their last figures, and this is retried", "llmtrace: budgets and alerts work again",
        )  # fmt: skip
        self._short_retention_told: set[Budget] = set()
        self._tell_of_short_retention()
        if guard is not None:
            guard.set_budgets(self.budgets)  # and again whenever code declares budgets (wake)

    @property
    def budgets(self) -> tuple[Budget, ...]:
        return self._file_budgets + budgets.declared()

    def start(self) -> None:
        budgets.on_change(self.wake)
        self._thread = threading.Thread(target=self._run, name="llmtrace-monitor", daemon=True)
        self._thread.start()

    def after_fork_in_child(self) -> None:
        """The parent's monitor thread does not exist here: this process needs one of its own, or its block
        budgets would never again see what other processes spent."""
        if self._thread is None or self._stopped.is_set():
            return
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._rounds = threading.Lock()  # the parent's monitor thread may have held it at the fork
        if self.guard is not None:
            self.guard.after_fork_in_child()
        self.alerter.after_fork_in_child()
        self.start()

    def wake(self) -> None:
        """Budgets were declared in code: enforce them now. With a ``block`` budget among them, what was spent is read
        from the store (this process's calls so far written to it first) before this returns, as at ``instrument()``:
        the next call is refused if the budget is already spent. The monitor's next round starts at once."""
        self._tell_of_short_retention()
        guard = self.guard
        if guard is not None:
            guard.set_budgets(self.budgets)
            # On the monitor thread, its own round follows.
            if guard.budgets and threading.current_thread() is not self._thread:
                self._refresh_guard_now()
        self._wake.set()

    def _tell_of_short_retention(self) -> None:
        """Retention deletes spans at every merge: shorter than a budget's period, it deletes spend the budget counts
        (a month's cap would admit calls again after its first days). Said once per budget; the setting stands."""
        kept = self.settings.retention_days
        if not kept:
            return
        for budget in self.budgets:
            days = budgets.PERIOD_DAYS[budget.period]
            if kept < days and budget not in self._short_retention_told:
                self._short_retention_told.add(budget)
                logger.warning(
                    "llmtrace: retention_days = %d deletes spans older than that, but the budget %s counts what was "
                    "spent over its %s (up to %d days): it will count less than was spent. Keep spans %d days or more "
                    "(retention_days = %d, or 0 to keep them all)", kept, budget.name, budget.period, days, days, days,
                )  # fmt: skip

    def _refresh_guard_now(self) -> None:
        """The block budgets' spend read now, on the app's thread, waiting ``ADD_WAIT_S`` at most for a round already
        running and as long again for this process's spans to be written. Its alerts are left to the monitor
        thread's round. Past the wait, the budgets count this process's calls until that round has read the store."""
        read = False
        with internal_errors(), background_work():  # before the round lock, as the monitor thread takes them
            if self._rounds.acquire(timeout=ADD_WAIT_S):
                try:
                    read = self._guarded(self._read_spend_for_the_guard)
                finally:
                    self._rounds.release()
        if not read:
            logger.warning(
                "llmtrace: a block budget was declared, but what was spent could not be read from the store within "
                "%g s (another read of it, or the writer, is slow): until the monitor reads it, the budget counts "
                "this process's calls from now only", ADD_WAIT_S,
            )  # fmt: skip

    def _read_spend_for_the_guard(self) -> bool:
        self.refresh_budgets(self.budgets, flush_timeout_ms=int(ADD_WAIT_S * 1000))  # alerts: the monitor's round
        return True

    def stop(self) -> None:
        budgets.on_change(None)
        self._stopped.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        if self.budgets and not (thread is not None and thread.is_alive()):
            # A last look at the budgets: a process that crossed one since the last round (a short script, a worker
            # stopped) alerts all the same.
            with internal_errors(), background_work():
                self._round(anomalies=False)
        self.alerter.stop()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.settings.budget_refresh_interval)
            self._wake.clear()
            if self._stopped.is_set():
                return
            with internal_errors(), background_work(), self._rounds:
                self._round()

    def first_round(self) -> None:
        """Budgets only, now (``instrument()`` calls it, so that ``block`` budgets hold from the first call)."""
        with internal_errors(), background_work(), self._rounds:
            self._round(anomalies=False)
            if self._fault.current and any(budget.action == "block" for budget in self.budgets):
                logger.error(
                    "llmtrace: block budgets cannot read what was spent so far from the store: until they can, they "
                    "count only this process's calls, and may let through calls past their limit"
                )

    def _round(self, anomalies: bool = True) -> None:
        self._guarded(lambda: self.run_once(anomalies=anomalies))

    def _guarded(self, work: Callable[[], bool]) -> bool:
        """Run ``work`` (True: it read the store); False when the store could not be read or written."""
        try:
            read_the_store = work()
        except _SpansNotWritten:
            return False  # the store writer logged why; budgets keep their last figures (and the round waits) until it recovers
        except Exception as exc:
            # The store cannot be read or written (locked, corrupt, disk full): not a bug of llmtrace's.
            if not isinstance(exc, OSError) and not _is_store_error(exc):
                raise
            self._fault.report(f"{type(exc).__name__}: {exc}")
            return False
        if read_the_store:  # a round that had nothing to read says nothing of the store's health
            self._fault.clear()
        return True

    def run_once(self, now: datetime | None = None, anomalies: bool = True) -> bool:
        """One round: budgets, then anomalies when due; alerts go out through the alerter. True when it read the
        store."""
        declared = self.budgets
        alerts: list[Alert] = []
        read_the_store = bool(declared)
        later.release_old_holds()
        if declared:
            alerts.extend(self.refresh_budgets(declared, now))
        if anomalies and self.settings.anomaly_detectors and time.monotonic() >= self._next_anomaly_run:
            interval = self.settings.anomaly_interval
            self._next_anomaly_run = time.monotonic() + interval
            # The detectors read the whole store: one process per interval runs them for all.
            stamp = self.writer.paths.anomaly_stamp
            if claim_round(stamp, interval):
                from . import anomalies as detectors  # DuckDB loads here, in the monitor thread, not at import

                try:
                    alerts.extend(detectors.detect(self.settings, self.db, now or utc_now()))
                except BaseException:
                    release_round(stamp)
                    raise
                read_the_store = True
        self.alerter.fire(alerts)  # with none new, it still retries those the store was too busy for
        return read_the_store

    def refresh_budgets(
        self, declared: tuple[Budget, ...], now: datetime | None = None, flush_timeout_ms: int = 30_000
    ) -> list[Alert]:
        """Read every budget's spend from the store, update the guard, and return the alerts that are due."""
        guard = self.guard
        version = self.writer.paths.version()  # before the snapshot: whatever is in the store now started before it
        snapshot = guard.snapshot() if guard is not None and guard.budgets else None
        # The spans this process counted before the snapshot must be in the store when it is read.
        if not self.writer.force_flush(flush_timeout_ms, merge=False) or not self.writer.healthy:
            raise _SpansNotWritten()
        now = now or utc_now()
        windows = [
            snapshot.windows[budget] if snapshot is not None and budget in snapshot.windows else (budget.window(now)[0], now)
            for budget in declared
        ]
        questions = [budgets.spend_question(budget, start, until) for budget, (start, until) in zip(declared, windows)]
        figures = self._spend(questions, version)
        if snapshot is not None and guard is not None:
            guard.refresh(snapshot, {b: f for b, f in zip(declared, figures) if b in snapshot.windows})
        alerts = []
        for budget, (start, _), spend in zip(declared, windows, figures):
            for key, spent in spend.items():
                alerts.extend(budget_alerts(budget, key, spent, start, now))
        return alerts

    def _spend(self, questions: list[BudgetQuestion], version: Any) -> list[dict[str | None, float]]:
        """The store's answers, or the last ones when the store has not changed since they were read.

        Only answers read while nothing was written (this round's flush included) are kept: every span in
        the store then started before the round's snapshot, so they hold for the same windows ending later.
        """
        from . import query

        store = self.writer.paths
        last = self._last_spend
        if (
            last is not None
            and last.version == version
            and [q[:-1] for q in last.questions] == [q[:-1] for q in questions]  # same budgets, keys, starts
            and all(q[-1] >= before[-1] for q, before in zip(questions, last.questions))  # ending no sooner
            and store.version() == version
        ):
            return last.figures
        figures = query.budget_spend(questions, db=self.db, in_app=True)
        self._last_spend = _SpendRead(version, questions, figures) if store.version() == version else None
        return figures


@dataclass(frozen=True)
class _SpendRead:
    version: Any  # the store's version (StorePaths.version) before and after the read
    questions: list[BudgetQuestion]
    figures: list[dict[str | None, float]]


class _SpansNotWritten(Exception):
    """This process's spans could not be written, so the store's figures would leave them out."""


def _is_store_error(exc: Exception) -> bool:
    import duckdb

    from .query import StoreError
    from .store.schema import StoreFromTheFuture

    return isinstance(exc, (duckdb.Error, StoreError, StoreFromTheFuture))


def budget_alerts(budget: Budget, key: str | None, spent: float, period_start: datetime, now: datetime) -> list[Alert]:
    """The alert a budget's spend calls for (its warning, or past its limit the exceeded alert), with its once-per-period
    id. Spend first seen past the limit (a new budget, a burst between two reads) fires the exceeded alert alone: a
    warning beside it says nothing more."""
    level = budgets.level(budget, spent)
    if level is None:
        return []
    used = spent / budget.limit_usd
    if budget.period in ("24h", "7d"):  # rolling: once per day (24h) or per 7 days
        length = 86400 if budget.period == "24h" else 7 * 86400
        period = f"{budget.period}#{int(now.replace(tzinfo=timezone.utc).timestamp() // length)}"
    else:
        period = period_start.isoformat()
    target = "global" if key is None else f"{budget.scope}={key}"
    label = budget.target if budget.key != EACH else f"{budget.target} ({key})"
    if level == "exceeded":
        consequence = "calls are refused until the period ends" if budget.action == "block" else "alert only"
        message = (f"Budget exceeded: {label} spent {usd(spent, budget.limit_usd)} of {usd(budget.limit_usd)} this {budget.period} "
                   f"({used:.0%}; {consequence})")  # fmt: skip
    else:
        message = (f"Budget warning: {label} spent {usd(spent, budget.limit_usd)} of {usd(budget.limit_usd)} this {budget.period} "
                   f"({used:.0%}, warning at {budget.warn_at:.0%})")  # fmt: skip
    return [Alert(
        # Two budgets alike but for their action or warning threshold are two budgets: each alerts.
        f"budget:{budget.name}:{budget.action}:{budget.warn_at:g}:{target}:{period}:{level}", f"budget_{level}", target,
        message,
        {"budget": budget.name, "scope": budget.scope, "key": key, "period": budget.period,
         "period_start": period_start.isoformat(), "spent_usd": spent, "limit_usd": budget.limit_usd,
         "used": used, "action": budget.action},
    )]  # fmt: skip

