"""A loop on a thread of its own that a watcher can check: running, stalled, or failed."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


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
        self.beat()
        try:
            self._loop()
        except BaseException as exc:
            log.exception("%s stopped on an error", self.name)
            self.failure = exc

    def _loop(self) -> None:
        raise NotImplementedError
