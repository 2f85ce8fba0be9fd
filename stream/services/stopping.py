"""Stop signals unwind a command as Ctrl-C does, never mid-start or mid-stop of a child.

The brokers and workers a command starts run in sessions of their own, so a
signal to the command does not reach them: only the command's ``finally``
blocks stop them. SIGTERM's default action ends a process without running
those. And a signal that unwinds the command while it starts a child (before
it holds the child's handle) or stops one (a worker between its SIGTERM and
its exit, checkpointing) leaves that child running, or without the broker it
was stopping against. So a stop signal that comes during ``uninterrupted()``
waits until the block is done.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)

_held = 0
_pending: int | None = None
_unwinding = False


def unwind_on_stop_signals() -> None:
    """SIGTERM and SIGINT raise SystemExit(143) and KeyboardInterrupt in the main thread."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _unwinding and signum == signal.SIGTERM:
        return  # a supervisor's second SIGTERM does not cut the stopping short
    if _held:
        _pending = signum
        return
    _unwind(signum)


def _unwind(signum: int) -> None:
    global _unwinding
    _unwinding = True
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A stop signal that comes during the block unwinds the command once it is done."""
    global _held, _pending
    _held += 1
    try:
        yield
    finally:
        _held -= 1
    if not _held and _pending is not None:
        signum, _pending = _pending, None
        _unwind(signum)


def terminate(process: subprocess.Popen[bytes], timeout: float, name: str) -> int:
    """SIGTERM, then SIGKILL after ``timeout``, uninterrupted; the exit code."""
    with uninterrupted():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing pid %d", name, timeout, process.pid)
                process.kill()
                process.wait()
    return process.returncode
