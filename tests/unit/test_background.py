"""The watchdog's view of a background loop: fine, failed, stopped, or stuck."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from stream.background import BackgroundLoop


class Loop(BackgroundLoop):
    def __init__(self, body: Callable[[BackgroundLoop], None], stall_after: float = 0.3) -> None:
        super().__init__("test-loop", stall_after=stall_after)
        self.body = body

    def _loop(self) -> None:
        self.body(self)


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_a_beating_loop_is_fine() -> None:
    def body(loop: BackgroundLoop) -> None:
        while not loop.stopping:
            loop.beat()
            time.sleep(0.05)

    loop = Loop(body)
    assert loop.trouble() is None, "not started yet"
    loop.start()
    time.sleep(0.5)
    assert loop.trouble() is None
    loop.stop()


def test_a_stuck_loop_is_reported() -> None:
    release = threading.Event()
    loop = Loop(lambda _: release.wait(10))
    loop.start()
    wait_for(lambda: loop.trouble() is not None)
    trouble = loop.trouble()
    assert trouble is not None and "made no progress" in trouble
    release.set()
    loop.stop()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (lambda _: None, "test-loop stopped"),
        (lambda _: 1 / 0, "test-loop failed: ZeroDivisionError"),
    ],
)
def test_a_loop_that_ended_is_reported(
    body: Callable[[BackgroundLoop], None], expected: str
) -> None:
    loop = Loop(body, stall_after=60)
    loop.start()
    wait_for(lambda: not loop.alive)
    trouble = loop.trouble()
    assert trouble is not None and trouble.startswith(expected)
