"""Recording alerts: the ``alerts`` table's primary key decides which process delivers each one."""

from __future__ import annotations

from typing import Any

from .files import StorePaths
from .merge import open_for_write

AlertRow = tuple[str, Any, str, str, str, str]  # alert_id, fired_at, kind, subject, message, details (JSON)


def record(paths: StorePaths, rows: list[AlertRow]) -> set[str] | None:
    """Insert the alerts not recorded yet; returns their ids, or None when another process holds the database."""
    con = open_for_write(paths)
    if con is None:
        return None
    inserted: set[str] = set()
    try:
        con.execute("BEGIN")
        for row in rows:
            new = con.execute("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING alert_id", list(row))
            inserted.update(r[0] for r in new.fetchall())
        con.execute("COMMIT")
    finally:
        con.close()
    return inserted
