"""The embedded span store: per-process Parquet segments merged into one DuckDB file (DESIGN §4).

Importing this package is cheap: DuckDB and Arrow load in the writer thread, or when a module that
needs them (``merge``, ``schema``, ``llmtrace.query``) is imported.
"""

from __future__ import annotations

from .files import StorePaths, resolve
from .writer import StoreWriter

__all__ = ["StorePaths", "StoreWriter", "resolve"]
