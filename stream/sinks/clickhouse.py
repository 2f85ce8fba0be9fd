"""ClickHouse through clickhouse-connect: the embedded engine (chdb://) or a server (http(s)://)."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from stream.errors import DataFolderBusy, ServiceError, SettingsError, SinkUnavailable

log = logging.getLogger(__name__)

DSN_SETTING = "STREAM_CLICKHOUSE_DSN"
LOCK_FILE = ".stream.lock"


@dataclass
class ClickHouse:
    """An open connection, and for the embedded engine the lock on its data folder."""

    client: Client
    dsn_display: str
    _lock: IO[str] | None = None

    def close(self) -> None:
        self.client.close()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def _embedded_folder(dsn: str) -> Path:
    parsed = urlparse(dsn)
    if parsed.netloc and parsed.netloc != "":
        raise SettingsError(
            DSN_SETTING, f"use chdb:///absolute/path for the embedded engine, not {dsn!r}"
        )
    if not parsed.path or parsed.path == "/":
        raise SettingsError(DSN_SETTING, "chdb:// needs a data folder, e.g. chdb:///var/lib/stream")
    return Path(parsed.path)


def _lock_folder(folder: Path) -> IO[str]:
    """Hold an exclusive lock on the data folder; the engine allows one process per folder."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DataFolderBusy(
            f"ClickHouse data folder {folder} is busy: process {holder} has it open "
            f"(stop that process first, or point {DSN_SETTING} at a ClickHouse server)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def connect(dsn: str, database: str) -> ClickHouse:
    """Open the DSN and make sure ``database`` exists; errors are one line naming the setting."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise SettingsError("STREAM_CLICKHOUSE_DATABASE", f"not a plain identifier: {database!r}")
    scheme = urlparse(dsn).scheme
    lock: IO[str] | None = None
    if scheme == "chdb":
        folder = _embedded_folder(dsn)
        lock = _lock_folder(folder)
        display = f"chdb://{folder}"
    elif scheme in ("http", "https"):
        parsed = urlparse(dsn)
        display = f"{scheme}://{parsed.hostname}:{parsed.port or ''}"
    else:
        raise SettingsError(
            DSN_SETTING, f"unsupported scheme {scheme!r}: use chdb:///path or http(s)://"
        )
    try:
        if scheme == "chdb":
            client = clickhouse_connect.get_client(dsn=dsn)
        else:
            # Bounded calls: a server that stops answering fails the write, it cannot hang it.
            client = clickhouse_connect.get_client(
                dsn=dsn, connect_timeout=5, send_receive_timeout=30
            )
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        client.database = database
    except Exception as exc:
        if lock is not None:
            lock.close()
        raise ServiceError(f"{DSN_SETTING}: cannot use ClickHouse at {display}: {exc}") from None
    return ClickHouse(client, display, lock)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate(ch: ClickHouse, migrations_dir: Path) -> list[str]:
    """Apply the SQL files in name order that were not applied before; return their names."""
    if not migrations_dir.is_dir():
        raise SettingsError("STREAM_MIGRATIONS_DIR", f"no migrations folder at {migrations_dir}")
    client = ch.client
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(name String, applied_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY name"
    )
    done = {row[0] for row in client.query("SELECT name FROM schema_migrations FINAL").result_rows}
    applied = []
    for path in sorted(migrations_dir.glob("*.sql")):
        if path.name in done:
            continue
        for statement in _statements(path.read_text()):
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[path.name, datetime.now(UTC)]],
            column_names=["name", "applied_at"],
        )
        applied.append(path.name)
        log.info("applied migration %s", path.name)
    return applied


# Time column of each table that retention applies to; the log tables grow with
# every event, the others with every window.
WINDOW_TABLES = {
    "latency_windows": "window_start",
    "drift_windows": "window_start",
    "quality_windows": "window_start",
    "alerts": "window_start",
    "model_events": "at",
}
LOG_TABLES = {"prediction_log": "scored_time", "feedback": "received_at"}


def apply_retention(ch: ClickHouse, window_days: int, log_days: int) -> list[str]:
    """Set each table's TTL to its retention (0 keeps rows for ever); return the tables changed.

    Only a TTL that differs is changed: changing one makes ClickHouse rewrite
    the table's parts.
    """
    rows = ch.client.query(
        "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase()"
    ).result_rows
    engines = {str(name): str(engine) for name, engine in rows}
    changed = []
    for tables, days in ((WINDOW_TABLES, window_days), (LOG_TABLES, log_days)):
        for table, column in tables.items():
            engine = engines.get(table, "")
            ttl = f"TTL toDateTime({column}) + toIntervalDay({days})"
            if days and ttl not in engine:
                ch.client.command(f"ALTER TABLE {table} MODIFY {ttl}")
            elif not days and " TTL " in engine:
                ch.client.command(f"ALTER TABLE {table} REMOVE TTL")
            else:
                continue
            changed.append(table)
            log.info("retention of %s: %s", table, f"{days} days" if days else "none")
    return changed


class ClickHouseSink:
    """Inserts of finished windows, and whether ClickHouse takes them right now.

    Rows are keyed (ReplacingMergeTree), so an insert retried after a failure
    replaces itself. After a failed insert the sink holds further tries back for
    a while (0.5 s, doubling up to ``max_wait``): an outage costs one failed call
    per wait, not one per partial. Inserts run on the worker's one writer
    thread; ``status`` is read from the event loop.
    """

    def __init__(
        self,
        ch: ClickHouse,
        min_wait: float = 0.5,
        max_wait: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        self._client = ch.client
        self._observe = observe  # (table, seconds, ok) of every insert, for /metrics
        self._min_wait = min_wait
        self._max_wait = max_wait
        self._clock = clock
        self._next_try = 0.0
        self._failures_in_a_row = 0
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.failed_inserts = 0
        self.rows_written = 0

    def insert_arrow(self, table: str, columns: Sequence[str], stream: bytes, rows: int) -> None:
        """Write an Arrow IPC stream of ``rows`` rows as it is (ClickHouse reads the format)."""
        started = time.perf_counter()
        try:
            self._client.raw_insert(table, list(columns), insert_block=stream, fmt="ArrowStream")
        except Exception as exc:
            self._failed(table, exc)
            raise SinkUnavailable(f"ClickHouse did not take {table}: {self.last_error}") from exc
        self._took(table, started)
        self.rows_written += rows
        self._recovered()

    def run(self, work: Callable[[Client], Any]) -> Any:
        """Run ``work`` with the client (queries, INSERT ... SELECT), on the writer thread.

        A failure counts as an outage like a failed insert: raise SinkUnavailable.
        """
        try:
            result = work(self._client)
        except Exception as exc:
            self._failed("query", exc)
            raise SinkUnavailable(f"ClickHouse did not run a query: {self.last_error}") from exc
        self._recovered()
        return result

    @property
    def available(self) -> bool:
        return self.down_since is None

    def wait_seconds(self) -> float:
        """How long to hold back before the next try; 0 when a write may go now."""
        return max(0.0, self._next_try - self._clock())

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Write ``rows``, or raise SinkUnavailable and keep the caller's rows where they are."""
        if not rows:
            return
        started = time.perf_counter()
        try:
            self._client.insert(table, [list(r) for r in rows], column_names=list(columns))
        except Exception as exc:
            self._failed(table, exc)
            raise SinkUnavailable(f"ClickHouse did not take {table}: {self.last_error}") from exc
        self._took(table, started)
        self.rows_written += len(rows)
        self._recovered()

    def _took(self, table: str, started: float) -> None:
        if self._observe is not None:
            self._observe(table, time.perf_counter() - started, True)

    def _recovered(self) -> None:
        if self.down_since is not None:
            log.warning(
                "ClickHouse takes writes again after %.1fs", self._clock() - self.down_since
            )
        self.down_since = None
        self._failures_in_a_row = 0
        self._next_try = 0.0

    def _failed(self, table: str, exc: Exception) -> None:
        if self._observe is not None:
            self._observe(table, 0.0, False)
        now = self._clock()
        self.failed_inserts += 1
        self.last_error = " ".join(str(exc).split())[:300] or type(exc).__name__
        wait = min(self._max_wait, self._min_wait * 2**self._failures_in_a_row)
        self._failures_in_a_row += 1
        self._next_try = now + wait
        if self.down_since is None:
            self.down_since = now
            log.error("ClickHouse does not take writes (%s): %s", table, self.last_error)
        else:
            log.warning(
                "ClickHouse still does not take writes after %.1fs; next try in %.1fs",
                now - self.down_since, wait,
            )  # fmt: skip

    def status(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "down_seconds": (
                None if self.down_since is None else round(self._clock() - self.down_since, 1)
            ),
            "last_error": self.last_error,
            "failed_inserts": self.failed_inserts,
            "rows_written": self.rows_written,
        }
