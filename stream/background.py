"""A loop on a thread of its own that a watcher can check: alive, or failed with what."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class BackgroundLoop:
    """Runs ``_loop`` on a daemon thread until ``stop``; an error ends it and stays in ``failure``.

    The worker's EngineService watches every such loop and takes the worker
    down when one stops, so none of them ends silently.
    """

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failure: BaseException | None = None

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

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            log.exception("%s stopped on an error", self.name)
            self.failure = exc

    def _loop(self) -> None:
        raise NotImplementedError
