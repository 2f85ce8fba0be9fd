"""ClickHouse's HTTP interface over the embedded engine, for tests of the server DSN.

No ClickHouse server binary can be installed on the test machines (Debian's
package is from 2018), so tests that need ``http://`` start this process: the
real ClickHouse engine (chdb) on a data folder of its own, answering the HTTP
requests clickhouse-connect sends (queries with ``param_*`` bindings and
settings, ``INSERT ... FORMAT`` with a compressed or chunked body, errors with
``X-ClickHouse-Exception-Code``). Stopping it is a real outage: connections
are refused until it starts again on the same folder.

    python -m tests.chserver FOLDER PORT
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

import chdb
import lz4.frame

# Request parameters that shape the HTTP exchange, not the query.
TRANSPORT = {
    "query",
    "database",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "default_format",
    "enable_http_compression",
    "http_zlib_compression_level",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "wait_end_of_query",
    "client_protocol_version",
    "compress",
    "decompress",
    "user",
    "password",
}
# An INSERT's data follows its FORMAT clause, in the URL's query or in the body.
INSERT_DATA = re.compile(
    rb"^\s*INSERT\s.*?\bFORMAT\s+(\w+)[ \t]*(?:\r?\n)?", re.IGNORECASE | re.DOTALL
)
TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
ERROR_CODE = re.compile(r"Code: (\d+)")


def decode(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return body
    if encoding == "lz4":
        return bytes(lz4.frame.decompress(body))
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class Engine:
    """One chdb connection; ClickHouse allows one process per data folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.conn = chdb.connect(f"file:{folder / 'data'}")
        # Beside the data: the server is killed, not stopped, so it cannot clean up after itself.
        self.spool = folder / "spool"
        self.spool.mkdir(exist_ok=True)
        self.lock = threading.Lock()

    def run(
        self, sql: bytes, database: str, params: dict[str, str], settings: dict[str, str]
    ) -> tuple[bytes, str]:
        with self.lock:
            # Each request in its own database, as a server's: the connection keeps the last.
            self.conn.query(f"USE `{database or 'default'}`")
            applied = [k for k in settings if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
            try:
                for key in applied:
                    self.conn.query(f"SET {key} = {quote(settings[key])}")
                return self._run_locked(sql, params)
            finally:
                for key in applied:
                    # A setting that cannot go back to its default stays set.
                    with contextlib.suppress(Exception):
                        self.conn.query(f"SET {key} = DEFAULT")

    def _run_locked(self, sql: bytes, params: dict[str, str]) -> tuple[bytes, str]:
        insert = INSERT_DATA.match(sql)
        if insert is not None:
            # Hand the data to the engine as a file: it may be any bytes.
            fmt = insert.group(1).decode()
            spool = self.spool / f"{threading.get_ident()}.{fmt.lower()}"
            spool.write_bytes(sql[insert.end() :])
            head = sql[: insert.start(1)].decode().rstrip()
            head = head[: -len("FORMAT")].rstrip()
            self.conn.query(f"{head} FROM INFILE {quote(str(spool))} FORMAT {fmt}")
            return b"", "TabSeparated"
        text = sql.decode()
        fmt_match = TRAILING_FORMAT.search(text)
        fmt = fmt_match.group(1) if fmt_match else "TabSeparated"
        result = self.conn.query(text, fmt, params=params)
        return bytes(result.bytes() or b""), fmt


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        try:
            body = self._body()
        except Exception as exc:
            self._reply(400, f"cannot read the request: {exc}\n".encode(), {})
            return
        self._handle(body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(parts)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return decode(body, self.headers.get("Content-Encoding", ""))

    def _handle(self, body: bytes) -> None:
        url = urlparse(self.path)
        if url.path in ("/ping", "/ping/"):
            self._reply(200, b"Ok.\n", {})
            return
        query: dict[str, str] = dict(parse_qsl(url.query, keep_blank_values=True))
        params = {k[len("param_") :]: v for k, v in query.items() if k.startswith("param_")}
        settings = {
            k: v for k, v in query.items() if k not in TRANSPORT and not k.startswith("param_")
        }
        # As ClickHouse does: the query is the URL's query followed by the body.
        head = query.get("query", "").encode()
        sql = head + (b"\n" if head and body else b"") + body
        try:
            out, fmt = self.server.engine.run(sql, query.get("database", ""), params, settings)
        except Exception as exc:
            message = str(exc).strip()
            code = ERROR_CODE.search(message)
            self._reply(
                500,
                (message + "\n").encode(),
                {"X-ClickHouse-Exception-Code": code.group(1) if code else "1000"},
            )
            return
        self._reply(200, out, {"X-ClickHouse-Format": fmt})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Timezone", "UTC")
        self.send_header("X-ClickHouse-Summary", json.dumps({"read_rows": "0"}))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    engine: Engine


class ClickHouseServer:
    """This module run as a child process, on one folder and one port across restarts."""

    def __init__(self, folder: Path, port: int, log_path: Path) -> None:
        self.folder = folder
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ClickHouseServer:
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.chserver", str(self.folder), str(self.port)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ClickHouse test server did not start: {self.log_path}")
            time.sleep(0.1)
        return self

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dsn}/ping", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """Stop at once, as a crash does: connections are refused from now on."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None


def main() -> None:
    folder, port = Path(sys.argv[1]), int(sys.argv[2])
    server = Server(("127.0.0.1", port), Handler)
    server.engine = Engine(folder)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
