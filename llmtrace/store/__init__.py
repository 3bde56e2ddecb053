"""The embedded span store: per-process Parquet segments merged into one DuckDB file (DESIGN §4)."""

from __future__ import annotations

from .files import StorePaths, resolve
from .merge import MergeOutcome, merge
from .writer import StoreWriter

__all__ = ["MergeOutcome", "StorePaths", "StoreWriter", "merge", "resolve"]
