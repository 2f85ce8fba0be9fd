"""ClickHouse through clickhouse-connect: the embedded engine (chdb://) or a server (http(s)://)."""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from stream.errors import DataFolderBusy, ServiceError, SettingsError

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
            client = clickhouse_connect.get_client(dsn=dsn, connect_timeout=5)
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


class ClickHouseSink:
    """Batched inserts of finished windows. Rows are keyed, so a retried insert replaces itself."""

    def __init__(self, ch: ClickHouse) -> None:
        self._client = ch.client

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._client.insert(table, [list(r) for r in rows], column_names=list(columns))
