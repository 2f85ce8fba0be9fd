"""A ``stream worker`` child process: started, watched through its status page, stopped by pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from stream.errors import ServiceError
from stream.services.kafka import free_port
from stream.services.stopping import terminate, uninterrupted


class WorkerProcess:
    def __init__(self, pipeline_file: Path, env: dict[str, str], log_path: Path) -> None:
        self.pipeline_file = pipeline_file
        self.web_port = free_port()
        self.env = {**os.environ, **env, "STREAM_WEB_PORT": str(self.web_port)}
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "stream", "worker", "--pipeline", str(self.pipeline_file)]
        try:
            with uninterrupted(), self.log_path.open("ab") as log_file:
                self._process = subprocess.Popen(
                    command, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        except BaseException:
            self.stop()  # a stop signal came while it started: the caller has no worker to stop
            raise
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def memory_mib(self) -> dict[str, float]:
        """Resident memory now (``rss``) and its peak so far (``peak``), from /proc; MiB."""
        values = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values["rss" if name == "VmRSS" else "peak"] = int(rest.split()[0]) / 1024
        return values

    def status(self) -> dict[str, Any] | None:
        return self.page("/stream/status/")

    def page(self, path: str) -> dict[str, Any] | None:
        """A JSON page of the worker's web server (503 ones too); None if nothing answers."""
        url = f"http://127.0.0.1:{self.web_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return None

    def text(self, path: str) -> str:
        """A page of the worker's web server as text (e.g. ``/metrics``)."""
        url = f"http://127.0.0.1:{self.web_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def wait_until(self, check: Any, timeout: float, what: str) -> dict[str, Any]:
        """Poll the status page until ``check(status)`` is true; fail fast if the worker exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise ServiceError(
                    f"worker exited with code {self.returncode} while waiting for {what}:\n"
                    + self.log_tail()
                )
            status = self.status()
            if status is not None and check(status):
                return status
            time.sleep(0.2)
        raise ServiceError(f"worker: no {what} within {timeout:.0f}s\n" + self.log_tail())

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        """Until the worker has started (its faust app too) and its engines own partitions."""
        return self.wait_until(lambda s: bool(s["ready"]), timeout, "readiness")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
        process = self._process
        if process is None:
            return None
        return terminate(process, timeout, "worker")

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to checkpoint."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
