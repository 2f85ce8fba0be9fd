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


def test_what_is_fetched_already_is_taken_without_waiting() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [list(range(10))])
    policy = BatchPolicy(max_size=10, max_wait_s=0.5, clock=clock)
    assert policy.collect(topic.consume) == list(range(10))
    assert topic.calls == [(10, 0.0)]


def test_a_partial_batch_is_topped_up_within_the_linger() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [[1, 2, 3], [4, 5], [6, 7, 8]])
    policy = BatchPolicy(max_size=8, max_wait_s=0.5, clock=clock)
    assert policy.collect(topic.consume) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [n for n, _ in topic.calls] == [8, 5, 3]


def test_a_quiet_topic_releases_a_partial_batch_after_the_linger() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [[1, 2]])
    policy = BatchPolicy(max_size=100, max_wait_s=0.005, clock=clock)
    assert policy.collect(topic.consume) == [1, 2]
    assert clock.now == pytest.approx(0.006, abs=0.001), "at most the linger after the first"


def test_without_a_linger_only_what_is_there_goes() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [[1, 2], [3]])
    assert BatchPolicy(100, 0.0, clock=clock).collect(topic.consume) == [1, 2]


def test_an_empty_topic_waits_for_a_first_record_then_returns_empty() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [])
    assert BatchPolicy(100, 0.5, clock=clock, idle_wait_s=0.2).collect(topic.consume) == []
    assert topic.calls == [(100, 0.0), (1, 0.2)]
    assert clock.now == pytest.approx(0.2)


def test_the_first_record_after_a_quiet_spell_starts_the_linger() -> None:
    clock = FakeClock()
    topic = FakeTopic(clock, [])
    topic.arrivals = []
    calls = iter([[], [1], [2, 3]])

    def consume(n: int, timeout: float) -> list[int]:
        topic.calls.append((n, timeout))
        clock.now += 0.001
        return next(calls, [])

    assert BatchPolicy(10, 0.05, clock=clock).collect(consume) == [1, 2, 3]
    assert [n for n, _ in topic.calls][:3] == [10, 1, 9]


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(0, 1.0)
