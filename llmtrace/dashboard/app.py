"""The llmtrace dashboard: ``llmtrace dashboard`` serves it with Streamlit.

The sidebar picks a page, a time range and filters; the page body re-runs on its own every few seconds
(``LLMTRACE_DASHBOARD_REFRESH``), so a running app's calls appear without a reload. It reads the store
named by ``LLMTRACE_DB`` through ``llmtrace.query`` only.
"""

from __future__ import annotations

import os
from datetime import date, datetime, time, timedelta

import streamlit as st

from llmtrace import query
from llmtrace.dashboard import DEFAULT_REFRESH_S, ENV_REFRESH
from llmtrace.dashboard import charts as C
from llmtrace.dashboard.pages import PAGES, View
from llmtrace.store import resolve

_RANGES = {"Last hour": timedelta(hours=1), "Last 24 hours": timedelta(days=1), "Last 7 days": timedelta(days=7),
           "Last 30 days": timedelta(days=30)}  # fmt: skip
_FILTERS = (("service", "Service"), ("provider", "Provider"), ("model", "Model"), ("tenant", "Tenant"),
            ("feature", "Feature"))  # fmt: skip
_TAGS = ("tenant", "feature")  # filters that can also pick the calls without the tag
_MAX_BARS = 60  # charts pick the finest bucket that keeps them under this many bars


def _refresh_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(ENV_REFRESH, DEFAULT_REFRESH_S)))
    except ValueError:
        return DEFAULT_REFRESH_S


def _page_picker() -> str:
    names = list(PAGES)
    wanted = st.query_params.get("page", "overview").capitalize()
    page = st.sidebar.radio("Page", names, index=names.index(wanted) if wanted in names else 0, key="page")
    st.query_params["page"] = page.lower()
    return page


def _time_range() -> tuple[query.TimeRange, str]:
    choice = st.sidebar.selectbox("Time range", [*_RANGES, "Custom"], index=1, key="range")
    if choice != "Custom":
        return query.TimeRange.last(_RANGES[choice]), choice.lower().replace("last", "the last")
    today = query.TimeRange.last(timedelta(0)).since.date()
    picked = st.sidebar.date_input("Days (UTC)", (today - timedelta(days=6), today), key="days")
    first, last = (picked[0], picked[-1]) if isinstance(picked, tuple) and picked else (today, today)
    assert isinstance(first, date) and isinstance(last, date)
    since = datetime.combine(first, time())
    return query.TimeRange(since, datetime.combine(last, time()) + timedelta(days=1)), f"{first} – {last}"


def _filters(time_range: query.TimeRange, db: str) -> query.Filters:
    values = query.dimension_values(time_range, db=db)
    chosen = {}
    for name, label in _FILTERS:
        options = [C.NO_FILTER, *([C.NO_TAG] if name in _TAGS else []), *values[name]]
        current = st.session_state.get(f"filter_{name}")
        if current and current not in options:  # chosen in another time range: keep it selectable
            options.append(current)
        # Lists hold the values with the most calls (query.dimension_values' limit): any other can be typed in.
        pick = st.sidebar.selectbox(label, options, key=f"filter_{name}", accept_new_options=True, format_func=_shown)
        chosen[name] = {C.NO_FILTER: None, C.NO_TAG: query.UNTAGGED}.get(pick, pick)
    return query.Filters(**chosen)


def _shown(option: str) -> str:
    # Streamlit tells the options apart by what they show: a tag that reads as one of these choices is shown quoted.
    shown = {C.NO_FILTER: "All", C.NO_TAG: C.UNTAGGED}
    if option in shown:
        return shown[option]
    return f'"{option}"' if option in shown.values() else option


def _bucket(time_range: query.TimeRange, first: datetime | None, last: datetime | None) -> str:
    """The finest bucket that draws the range's data (not the whole empty range) in at most _MAX_BARS bars."""
    start = max(time_range.since, first) if first else time_range.since
    end = min(time_range.until, last) if last else time_range.until
    seconds = max((end - start).total_seconds(), 1.0)
    return next((name for name, width in query.BUCKETS.items() if seconds / width <= _MAX_BARS), "1 week")


def main() -> None:
    st.set_page_config(page_title="llmtrace", page_icon="📈", layout="wide")
    db = str(resolve(None).db)
    st.sidebar.title("llmtrace")
    page = _page_picker()
    time_range, label = _time_range()
    refresh = _refresh_seconds()
    st.sidebar.caption(f"Store: `{db}`")
    st.sidebar.caption(f"Refreshes every {refresh:g} s" if refresh else "Automatic refresh is off")
    if not query.store_exists(db):
        st.title(page)
        st.info(f"No llmtrace store at `{db}` yet. Call `llmtrace.instrument()` in your app (spans arrive within "
                "seconds), or run `llmtrace demo` to see the dashboard with simulated traffic.")
        _draw_again_once_readable(db, time_range, refresh)
        return
    set_aside = query.quarantine_note(db)
    if set_aside:
        st.sidebar.warning(set_aside)
    try:
        filters = _filters(time_range, db)
    except query.StoreError as exc:
        _store_unreadable(page, exc)
        _draw_again_once_readable(db, time_range, refresh)
        return

    @st.fragment(run_every=refresh or None)
    def body() -> None:
        # Relative ranges move with the clock at every refresh.
        current = query.TimeRange.last(_RANGES[st.session_state["range"]]) if st.session_state["range"] in _RANGES else time_range
        st.title(page)
        try:
            with query.open_store(db) as store:  # one snapshot: the page's numbers agree, and it opens once
                summary = query.summary(current, filters, db=store)
                bucket = _bucket(current, summary["first_call"], summary["last_call"])
                PAGES[page](View(current, filters, bucket, label, store, summary))
        except query.StoreError as exc:
            _store_unreadable(None, exc)

    body()


def _draw_again_once_readable(db: str, time_range: query.TimeRange, refresh: float) -> None:
    """A page drawn without the store (none yet, or a writer holds it) has no sidebar filters and no refreshing body:
    every refresh, ask the store what the sidebar asks, and draw the whole page again once it answers."""
    if not refresh:
        return
    drawn = datetime.now()

    @st.fragment(run_every=refresh)
    def look() -> None:
        if (datetime.now() - drawn).total_seconds() < refresh / 2:
            return  # the run that comes with the page itself, which just failed to read the store
        if query.store_exists(db):
            try:
                query.dimension_values(time_range, db=db)
            except query.StoreError:
                return
            st.rerun()

    look()


def _store_unreadable(page: str | None, exc: Exception) -> None:
    if page:
        st.title(page)
    st.error(f"The store cannot be read right now: {exc}")
    st.caption("This page tries again at its next refresh; nothing is lost while a writer holds the store.")


main()
