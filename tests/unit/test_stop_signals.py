"""A command stopped with SIGTERM stops what it started, as with Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.services import stopping, worker_process
from stream.services.worker_process import WorkerProcess

# A command that, like `stream bench` or `stream demo` with their local broker, starts
# a child in a session of its own and stops it in a ``finally`` block.
HOLD = """
import subprocess, sys, time
from stream import cli

@cli.app.command()
def hold() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        print(child.pid, flush=True)  # inside: the test's signal comes once it reads this
        time.sleep(120)
    finally:
        child.terminate()
        child.wait()
        print("child stopped", flush=True)

sys.argv = ["stream", "hold"]
cli.main()
"""


def test_sigterm_runs_the_commands_finally_blocks_and_exits_143() -> None:
    command = subprocess.Popen(
        [sys.executable, "-c", HOLD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert command.stdout is not None
    child = int(command.stdout.readline())
    try:
        command.send_signal(signal.SIGTERM)
        out, err = command.communicate(timeout=30)
        assert command.returncode == 128 + signal.SIGTERM, err
        assert "child stopped" in out
        assert "Traceback" not in err
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    finally:
        if command.poll() is None:
            command.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)  # left running when the command did not stop it


@pytest.fixture
def stop_signals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The command's handlers, in this process, for one test; pytest's own again after it."""
    monkeypatch.setattr(stopping, "_held", 0)
    monkeypatch.setattr(stopping, "_pending", None)
    monkeypatch.setattr(stopping, "_unwinding", False)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stopping.unwind_on_stop_signals()
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def test_a_stop_signal_during_an_uninterrupted_block_unwinds_once_it_is_done(
    stop_signals: None,
) -> None:
    done = []
    with pytest.raises(SystemExit) as stopped:
        with stopping.uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the block")
        done.append("after it")
    assert stopped.value.code == 128 + signal.SIGTERM
    assert done == ["the block"]
    os.kill(os.getpid(), signal.SIGTERM)  # a second one, while stopping: no second unwind


def test_ctrl_c_unwinds_as_a_keyboard_interrupt(stop_signals: None) -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)


def test_a_worker_started_as_the_signal_came_is_stopped_before_the_command_unwinds(
    stop_signals: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started = []
    popen = subprocess.Popen

    def popen_then_signal(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = popen(*args, **kwargs)
        started.append(process)
        os.kill(os.getpid(), signal.SIGTERM)  # as if it came while the child was created
        return process

    monkeypatch.setattr(worker_process.subprocess, "Popen", popen_then_signal)
    worker = WorkerProcess(tmp_path / "pipeline.yaml", {}, tmp_path / "worker.log")
    with pytest.raises(SystemExit):
        worker.start()
    (process,) = started
    # Stopped by its SIGTERM (before or after its own handlers were in place), not left running.
    assert process.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)


class _Worker:
    """Stands in for a bench's worker: what was started and what was stopped."""

    def __init__(self, log: list[str], name: str, fails: bool = False) -> None:
        self.log, self.name, self.fails = log, name, fails

    def start(self) -> _Worker:
        if self.fails:
            raise SystemExit(128 + signal.SIGTERM)  # a stop signal while it starts
        self.log.append(f"started {self.name}")
        return self

    def stop(self) -> None:
        self.log.append(f"stopped {self.name}")


def _bench(monkeypatch: pytest.MonkeyPatch, workers: list[_Worker]) -> Any:
    from types import SimpleNamespace

    from stream.bench import run

    pipeline = SimpleNamespace(name="p", partitions=4)
    monkeypatch.setattr(run, "_fresh_pipeline", lambda *a, **k: (pipeline, Path("p.yaml")))
    producer = SimpleNamespace(prepare=lambda *a, **k: [])
    return SimpleNamespace(
        worker=lambda *a: workers.pop(0),
        producer=lambda *a: producer,
        folder=Path("bench"),
        events=1000,
        timeout=10,
    )


def test_a_stop_signal_while_a_latency_run_makes_its_events_stops_its_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stream.bench import run

    log: list[str] = []
    bench = _bench(monkeypatch, [_Worker(log, "worker")])

    def signalled(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit(128 + signal.SIGTERM)  # the events take seconds to make

    monkeypatch.setattr(run, "_paced_events", signalled)
    with pytest.raises(SystemExit):
        run._latency_run(None, bench, 1000.0, 0.5, 1.0, 1.0)  # type: ignore[arg-type]
    assert log == ["started worker", "stopped worker"]


def test_a_stop_signal_while_scaling_workers_start_stops_the_ones_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from stream.bench import run

    log: list[str] = []
    workers = [_Worker(log, "first"), _Worker(log, "second", fails=True)]
    bench = _bench(monkeypatch, workers)
    with pytest.raises(SystemExit):
        run._scaling_run(None, bench, 2, Console(quiet=True))  # type: ignore[arg-type]
    assert log == ["started first", "stopped first", "stopped second"]
