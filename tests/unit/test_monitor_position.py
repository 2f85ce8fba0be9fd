"""The monitor reads partials from where its state ends, whatever offset the group committed."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust

from stream.models.manifest import ModelManifest
from stream.models.registry import ModelRegistry
from stream.monitor.agent import MonitorAgent
from stream.monitor.histograms import HistogramLayout
from stream.monitor.position import PROCESS, REWIND, SKIP, ReadPosition, resume_offset
from stream.monitor.windows import Partial, merge_partial, new_state
from stream.settings import PipelineConfig
from stream.sinks.clickhouse import ClickHouse, ClickHouseSink


def test_after_an_assignment_it_resumes_past_the_oldest_state_in_use() -> None:
    states = [
        {"watermark": 100_000, "offset": 41},
        {"watermark": 99_000, "offset": 37},  # in use: its partials are recent
        {"watermark": 10_000, "offset": 3},  # retired long ago: holds nothing back
        {"watermark": 100_000},  # written before offsets were recorded
    ]
    assert resume_offset(states, idle_after_ms=60_000) == 38
    assert resume_offset([{"watermark": 5}], idle_after_ms=60_000) is None


def test_partials_before_the_resume_offset_are_skipped_then_read_in_order() -> None:
    position = ReadPosition()
    position.restart(10)
    decisions = [position.decide(o, 0.0) for o in (7, 8, 9, 10, 11)]
    assert decisions == [SKIP, SKIP, SKIP, PROCESS, PROCESS]
    assert position.skipped == 3 and position.rewinds == 0


def test_a_committed_offset_past_the_state_rewinds_to_where_the_state_ends() -> None:
    position = ReadPosition()
    position.restart(10)
    # The group committed 14: partials 10-13 never reached the changelog.
    assert position.decide(14, 0.0) == REWIND
    assert position.expected == 10
    # Fetched before the seek took effect: skipped, not merged out of order.
    assert [position.decide(o, 0.0) for o in (15, 16)] == [SKIP, SKIP]
    assert [position.decide(o, 0.0) for o in range(10, 18)] == [PROCESS] * 8
    assert position.rewinds == 1 and position.expected == 18


def test_a_rewind_that_did_not_take_is_repeated() -> None:
    position = ReadPosition(retry_after=0.5)
    position.restart(10)
    assert position.decide(14, now=100.0) == REWIND
    assert position.decide(15, now=100.1) == SKIP
    # faust's own seek to the committed offset (12) came after the agent's.
    assert position.decide(12, now=100.2) == SKIP
    assert position.decide(13, now=100.6) == REWIND
    assert position.decide(13, now=100.7) == SKIP
    assert position.decide(10, now=100.8) == PROCESS
    assert position.rewinds == 1


def test_a_gap_in_the_middle_of_a_generation_rewinds_too() -> None:
    position = ReadPosition()
    position.restart(None)
    assert [position.decide(o, 0.0) for o in (0, 1, 2)] == [PROCESS] * 3
    assert position.decide(5, 0.0) == REWIND and position.expected == 3
    assert [position.decide(o, 0.0) for o in (3, 4, 5, 6)] == [PROCESS] * 4


def test_after_many_tries_the_partials_in_between_are_taken_to_be_gone() -> None:
    position = ReadPosition(retry_after=0.0, max_tries=3)
    position.restart(10)
    assert position.decide(12, now=0.0) == REWIND
    # 10 and 11 are not in the topic any more: 12 keeps coming first.
    assert [position.decide(12, now=t) for t in (1.0, 2.0)] == [REWIND, REWIND]
    assert [position.decide(12, now=3.0), position.decide(13, now=3.0)] == [PROCESS, PROCESS]
    assert position.given_up == 1


def _partial(manifest: ModelManifest, worker: str, seq: int, n: int) -> Partial:
    stats = HistogramLayout.of(manifest).empty()
    stats.count = n
    return Partial(
        "p", manifest.name, manifest.version, window_start=0, window_ms=1000,
        emitted_at=500 + seq, stats=stats, worker=worker, seq=seq,
    )  # fmt: skip


def test_reading_from_the_state_offset_again_merges_each_partial_once(
    registry: ModelRegistry,
) -> None:
    """The failure the position guards against, replayed on the window rules.

    The agent merged partials 0-3 in memory but only the state after 0-1 reached
    the changelog, while the group committed offset 4. Recovered from the
    changelog and resumed from its recorded offset, it reads 2-3 again: every
    event is counted once.
    """
    manifest = registry.manifest("payments-fraud", "1")
    sent = [("a", 1, 500), ("b", 1, 0), ("a", 2, 0), ("b", 2, 1000)]  # (engine, seq, events)
    topic = [_partial(manifest, worker, seq, n) for worker, seq, n in sent]
    state: dict[str, Any] = new_state()
    for offset, partial in enumerate(topic[:2]):
        merge_partial(state, partial)
        state["offset"] = offset
    changelog = json.loads(json.dumps(state))  # what survives
    for partial in topic[2:]:
        merge_partial(state, partial)  # lost with the worker

    recovered = changelog
    position = ReadPosition()
    position.restart(resume_offset([recovered], idle_after_ms=60_000))
    decisions = [position.decide(4, 0.0)]  # the committed offset
    assert decisions == [REWIND]
    for offset in (2, 3):
        assert position.decide(offset, 0.0) == PROCESS
        assert merge_partial(recovered, topic[offset]) == "merged"
    (window,) = recovered["open"].values()
    assert window["stats"]["count"] == 1500


def test_a_monitor_stuck_in_a_rebalance_is_trouble(registry: ModelRegistry) -> None:
    """faust can wait for changelog records that never come: the watchdog ends that wait."""
    pipeline = PipelineConfig.model_validate(
        {"name": "stuck", "model": {"name": "payments-fraud", "version": "1"}}
    )
    app = faust.App("unit-stuck", broker="kafka://127.0.0.1:1", store="memory://")
    sink = ClickHouseSink(ClickHouse(cast(Any, None), "fake"))
    with ThreadPoolExecutor(max_workers=1) as writer:
        agent = MonitorAgent(app, pipeline, registry, sink, writer, {})
        app.rebalancing = True
        assert agent.trouble(stall_after=0.05) is None, "a rebalance takes a moment"
        time.sleep(0.1)
        trouble = agent.trouble(stall_after=0.05)
        assert trouble is not None and "monitor of stuck has been rebalancing" in trouble
        app.rebalancing = False
        assert agent.trouble(stall_after=0.05) is None, "not the owner: nothing to stall"
