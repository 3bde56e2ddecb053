"""Where a store lives on disk, and its segment files.

``<db>`` is the DuckDB file; ``<db>.segments/`` holds Parquet segments that processes append
without any lock (written under a temporary name, then renamed, so a reader never sees half a
file); ``<db>.segments/quarantine/`` holds segments that could not be read, kept for inspection.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import ConfigError

fcntl: Any
try:
    import fcntl
except ImportError:  # not a POSIX system: the stamp's time alone coordinates
    fcntl = None

DEFAULT_DB = Path(".llmtrace") / "llmtrace.duckdb"
# DuckDB takes what follows a '?' in a database's path for connection options (it would look for the write-ahead log
# elsewhere, in a folder that does not exist where the '?' is in a folder's name), and a backslash for a folder
# separator: every merge would fail, spans piling up in segments.
_REFUSED_IN_PATHS = ("?", "\\") if os.sep == "/" else ("?",)
SEGMENT_SUFFIX = ".parquet"


@dataclass(frozen=True)
class StorePaths:
    db: Path

    @property
    def segments(self) -> Path:
        return self.db.with_name(self.db.name + ".segments")

    @property
    def wal(self) -> Path:
        """DuckDB's write-ahead log beside the database."""
        return self.db.with_name(self.db.name + ".wal")

    @property
    def key(self) -> Path:
        """The secret that keys request hashes, shared by every process writing this store."""
        return self.db.with_name(self.db.name + ".key")

    @property
    def anomaly_stamp(self) -> Path:
        """Touched by the process that runs the anomaly detectors for the whole store (``claim_round``)."""
        return self.db.with_name(self.db.name + ".anomalies")

    @property
    def quarantine(self) -> Path:
        return self.segments / "quarantine"

    def pending(self) -> list[Path]:
        """Finished segment files not yet merged, oldest first (names sort by time)."""
        try:
            return sorted(p for p in self.segments.iterdir() if p.suffix == SEGMENT_SUFFIX)
        except (FileNotFoundError, NotADirectoryError):  # no folder, or a path under a file: no segments
            return []

    def version(self) -> tuple[Any, ...]:
        """Changes whenever what readers see may have changed: every span arrives in a new segment, every
        merge removes segments, and retention writes the database. Cheap (a listing and two stats)."""
        return (tuple(p.name for p in self.pending()), *self.written())

    def written(self) -> tuple[Any, Any]:
        """The database and its log as they are now: a merge or retention changes them."""
        return _stat(self.db), _stat(self.wal)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_mtime_ns, status.st_size


def resolve(db: str | os.PathLike[str] | None = None) -> StorePaths:
    """The store at ``db``, else ``$LLMTRACE_DB``, else ``./.llmtrace/llmtrace.duckdb``; a path DuckDB cannot use
    is a ConfigError."""
    chosen = db if db is not None else os.environ.get("LLMTRACE_DB") or DEFAULT_DB
    if not str(chosen).strip():  # an unset variable in a config template: it would be the working folder itself
        raise ConfigError("db is empty: give the store's file (e.g. .llmtrace/llmtrace.duckdb), or leave db unset")
    path = Path(chosen).expanduser().absolute()
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: db is the store's database file (e.g. {path / 'llmtrace.duckdb'})")
    refused = [char for char in _REFUSED_IN_PATHS if char in str(path)]
    if refused:
        raise ConfigError(
            f"{path}: DuckDB cannot keep a database under a path with {' or '.join(map(repr, refused))} in it: choose "
            "another db path"
        )
    return StorePaths(path)


def request_hash_key(paths: StorePaths) -> bytes:
    """The store's hash key, created on first use (readable by its owner only). Where the folder cannot
    be written, a key of this process's own: duplicates are then found within each process only."""
    try:
        paths.db.parent.mkdir(parents=True, exist_ok=True)
        if not paths.key.exists():
            _publish_new_key(paths.key)
        key = paths.key.read_bytes()
        if len(key) < 16:
            raise OSError(f"{paths.key} is too short to be a key")
        return key[:64]
    except OSError as exc:
        logging.getLogger("llmtrace").warning("llmtrace: cannot use %s (%s); request hashes are per process", paths.key, exc)
        return os.urandom(32)


def _publish_new_key(key_file: Path) -> None:
    """Write a key under a private name, then link it into place: the link appears with the whole key in
    it, so a process starting at the same moment reads either no key file or a complete one; when two
    race, the first link wins and both use its key."""
    temporary = key_file.with_name(f".{key_file.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
        try:
            os.link(temporary, key_file)
        except FileExistsError:
            pass  # another process published its key first
    finally:
        temporary.unlink(missing_ok=True)


def claim_round(stamp: Path, interval: float) -> bool:
    """For a periodic job that any one of the store's processes can do for all: True (and the round is
    claimed) when no process claimed one in the last ``interval`` seconds. When the stamp cannot be
    read or written the answer is True: the job then runs in every process, as if uncoordinated."""
    try:
        descriptor = os.open(stamp, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return True
    try:
        # Held while looking and touching: processes due at the same moment would all see an old stamp.
        if fcntl is not None:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        status = os.fstat(descriptor)
        # An empty stamp is one this open() just made: no round was claimed yet.
        if status.st_size and time.time() - status.st_mtime < interval:
            return False
        if not status.st_size:
            os.write(descriptor, b"the last anomaly round's claim\n")
        os.utime(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)  # and with it the lock
    return True


def release_round(stamp: Path) -> None:
    """Give back a round ``claim_round`` claimed but could not do (the store was locked, say), so the
    next process due runs it instead of every process skipping the whole interval."""
    try:
        os.utime(stamp, (0, 0))
    except OSError:
        pass  # no stamp: nothing was claimed


def utc_now() -> datetime:
    """Now, as the store keeps time: naive UTC (its TIMESTAMP columns have no time zone)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_segment_id() -> str:
    # Sorts by creation time (merges keep arrival order); pid and a random part make it unique.
    return f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def write_segment(paths: StorePaths, table: Any) -> Path:
    """Write one segment (an Arrow table) atomically: a crash leaves a ``.tmp`` file that nothing reads."""
    import pyarrow.parquet as pq

    paths.segments.mkdir(parents=True, exist_ok=True)
    segment_id = new_segment_id()
    final = paths.segments / f"{segment_id}{SEGMENT_SUFFIX}"
    temporary = paths.segments / f".{segment_id}.tmp"
    try:
        # A segment lives seconds, until the next merge: written for speed, not size. lz4 without dictionaries or
        # statistics takes the writer thread 0.6 µs a span against 1.3 for zstd with both (the merge reads it
        # ~0.3 µs slower, on the other core); the segment is 1.5x larger.
        pq.write_table(table, temporary, compression="lz4", use_dictionary=False, write_statistics=False)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return final


def quarantine(paths: StorePaths, segment: Path) -> Path:
    paths.quarantine.mkdir(parents=True, exist_ok=True)
    target = paths.quarantine / segment.name
    os.replace(segment, target)
    return target
