"""The watchdog's view of a background loop: fine, failed, stopped, or stuck."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import pytest

from stream.background import (
    BackgroundLoop,
    PartitionProgress,
    lower_priority,
    name_thread,
    sink_thread,
)


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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_partition_without_progress_while_records_wait_is_stalled() -> None:
    clock = Clock()
    progress = PartitionProgress(stall_after=60, clock=clock)
    for second in range(0, 200, 10):
        clock.now = second
        progress.observe(
            {
                "e[0]": (100 + second, 5),  # moves: fine however long records wait
                "e[1]": (40, 0),  # nothing waits: idle, not stalled
                "e[2]": (7, 30 + second),  # stuck at offset 7 while its lag grows
            }
        )
        stalled = progress.stalled()
        assert set(stalled) == ({"e[2]"} if second > 60 else set())
    assert progress.describe() == "no progress on e[2] (220 records waiting, 190s)"


def test_progress_or_a_revoke_clears_a_stall() -> None:
    clock = Clock()
    progress = PartitionProgress(stall_after=60, clock=clock)
    progress.observe({"e[0]": (7, 10)})
    clock.now = 100
    progress.observe({"e[0]": (7, 10)})
    assert progress.stalled() == {"e[0]": 100}
    progress.observe({"e[0]": (8, 9)})
    assert progress.stalled() == {}
    clock.now = 200
    progress.observe({})  # revoked
    assert progress.stalled() == {} and progress.describe() is None


def _nice_of_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
def test_lower_priority_holds_for_the_thread_and_the_threads_it_starts() -> None:
    main = _nice_of_thread()
    if main > 16:
        pytest.skip("the tests already run nearly as nice as a thread can be")
    seen: dict[str, int] = {}

    def child() -> None:
        seen["child"] = _nice_of_thread()

    def body() -> None:
        lower_priority(main + 3)
        seen["thread"] = _nice_of_thread()
        started = threading.Thread(target=child)
        started.start()
        started.join()
        lower_priority(main + 1)  # already nicer: stays
        lower_priority(0)  # 0: nothing changes
        seen["after"] = _nice_of_thread()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == {"thread": main + 3, "child": main + 3, "after": main + 3}
    assert _nice_of_thread() == main  # the caller's thread only, not the process


def _os_name_of_thread() -> str:
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as comm:
        return comm.read().strip()


@pytest.mark.skipif(sys.platform != "linux", reason="thread names in /proc are Linux's")
def test_loops_and_the_clickhouse_thread_show_their_names_to_the_os() -> None:
    seen: dict[str, str] = {}

    def body(loop: BackgroundLoop) -> None:
        seen["loop"] = _os_name_of_thread()

    loop = Loop(body)
    loop.start()
    wait_for(lambda: "loop" in seen)
    loop.stop()

    def sink() -> None:
        sink_thread(0)
        seen["sink"] = _os_name_of_thread()
        name_thread("engine-a-pipeline-name")
        seen["long"] = _os_name_of_thread()

    # Named as the worker's pool names its thread; the OS keeps 15 bytes of it.
    thread = threading.Thread(target=sink, name="clickhouse-sink_0")
    thread.start()
    thread.join()
    assert seen == {"loop": "test-loop", "sink": "clickhouse-sink", "long": "engine-a-pipeli"}
