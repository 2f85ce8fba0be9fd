"""A loop on a thread of its own that a watcher can check: running, stalled, or failed."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def lower_priority(nice: int) -> None:
    """Run the calling thread, and every thread it starts from now on, at ``nice``.

    Linux keeps a nice value per thread and a new thread starts with its
    creator's, so the threads a library starts from this one follow it. A
    thread already nicer stays as it is; elsewhere than Linux nothing changes.
    """
    if nice <= 0 or sys.platform != "linux":
        return
    thread = threading.get_native_id()
    if os.getpriority(os.PRIO_PROCESS, thread) < nice:
        os.setpriority(os.PRIO_PROCESS, thread, nice)


def name_thread(name: str) -> None:
    """Show the calling thread to the OS as ``name`` (``top -H``, ``ps -L``, /proc).

    Linux keeps the first 15 bytes; elsewhere nothing changes. Threads a
    library starts from this one start with the name, until they set their own.
    """
    if sys.platform != "linux":
        return
    with (
        contextlib.suppress(OSError),
        open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm,
    ):
        comm.write(name.encode()[:15].decode(errors="ignore"))


def sink_thread(nice: int) -> None:
    """The start of the worker's ClickHouse thread: its name to the OS, below scoring's priority."""
    name_thread(threading.current_thread().name)
    lower_priority(nice)


class BackgroundLoop:
    """Runs ``_loop`` on a daemon thread until ``stop``; an error ends it and stays in ``failure``.

    The loop calls ``beat()`` on every turn. The worker's EngineService
    watches every such loop and takes the worker down when one failed,
    stopped, or made no turn for ``stall_after`` seconds (stuck in a call
    that does not return), so none of them ends or hangs silently.
    """

    def __init__(self, name: str, stall_after: float = 120.0) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failure: BaseException | None = None
        self.stall_after = stall_after
        self._last_beat = time.monotonic()

    @property
    def name(self) -> str:
        return self._thread.name

    def start(self) -> None:
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def trouble(self) -> str | None:
        """Why this loop cannot be trusted to make progress, or None while it is fine."""
        if self.failure is not None:
            return f"{self.name} failed: {self.failure!r}"
        if self._thread.ident is not None and not self.alive:
            return f"{self.name} stopped"
        silent = time.monotonic() - self._last_beat
        if self.alive and silent > self.stall_after:
            return f"{self.name} made no progress for {silent:.0f}s"
        return None

    def _run(self) -> None:
        name_thread(self.name)
        self.beat()
        try:
            self._loop()
        except BaseException as exc:
            log.exception("%s stopped on an error", self.name)
            self.failure = exc

    def _loop(self) -> None:
        raise NotImplementedError


class PartitionProgress:
    """Partitions that make no progress while records wait in them.

    ``observe`` takes, per partition, the consumer's position and the records
    behind the partition's end. A partition is stalled when records waited and
    its position did not move for ``stall_after`` seconds: the loop turns, but
    that partition is stuck (paused and never resumed, a fetch that never
    returns). Partitions not in the latest observation are forgotten.
    """

    def __init__(self, stall_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after = stall_after
        self._clock = clock
        self._since: dict[str, tuple[int, float]] = {}  # partition -> (position, since)
        self._lag: dict[str, int] = {}

    def observe(self, positions: dict[str, tuple[int, int]]) -> None:
        now = self._clock()
        for name, (position, lag) in positions.items():
            seen = self._since.get(name)
            if seen is None or seen[0] != position or lag == 0:
                self._since[name] = (position, now)
        self._lag = {name: lag for name, (_, lag) in positions.items()}
        for gone in set(self._since) - set(positions):
            del self._since[gone]

    def stalled(self) -> dict[str, float]:
        """Partition → seconds without progress, past ``stall_after`` with records waiting."""
        now = self._clock()
        return {
            name: now - since
            for name, (_, since) in self._since.items()
            if self._lag.get(name, 0) > 0 and now - since > self.stall_after
        }

    def describe(self) -> str | None:
        stalled = self.stalled()
        if not stalled:
            return None
        parts = ", ".join(
            f"{name} ({self._lag[name]} records waiting, {seconds:.0f}s)"
            for name, seconds in sorted(stalled.items())
        )
        return f"no progress on {parts}"
