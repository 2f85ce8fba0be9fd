from __future__ import annotations

import pytest

from stream.engine.batching import BatchPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTopic:
    """Hands out queued records; an empty poll advances the clock by its timeout."""

    def __init__(self, clock: FakeClock, arrivals: list[list[int]]) -> None:
        self.clock = clock
        self.arrivals = arrivals
        self.calls: list[tuple[int, float]] = []

    def consume(self, n: int, timeout: float) -> list[int]:
        self.calls.append((n, timeout))
        if not self.arrivals:
            self.clock.now += timeout
            return []
        got = self.arrivals.pop(0)
        assert len(got) <= n
        self.clock.now += 0.001
        return got


def test_full_batch_returns_without_waiting() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [list(range(10))])
    policy = BatchPolicy(max_size=10, max_wait_s=0.5, clock=clock)
    assert policy.collect(topic.consume) == list(range(10))
    assert len(topic.calls) == 1


def test_partial_batch_is_topped_up_until_size() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [[1, 2, 3], [4, 5], [6, 7, 8]])
    policy = BatchPolicy(max_size=8, max_wait_s=0.5, clock=clock)
    assert policy.collect(topic.consume) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [n for n, _ in topic.calls] == [8, 5, 3]


def test_quiet_topic_releases_partial_batch_at_max_wait() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [[1, 2]])
    policy = BatchPolicy(max_size=100, max_wait_s=0.5, clock=clock)
    assert policy.collect(topic.consume) == [1, 2]
    assert clock.now == pytest.approx(0.5, abs=0.01)


def test_empty_topic_returns_empty_after_max_wait() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [])
    assert BatchPolicy(100, 0.2, clock=clock).collect(topic.consume) == []
    assert clock.now == pytest.approx(0.2)


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(0, 1.0)
