"""The monitor agent: a faust agent that merges engine partials and writes closed windows.

State lives in a faust table with a changelog topic, keyed by
``pipeline|model|version``; a restarted worker recovers open windows from the
changelog. Writes to ClickHouse run on one thread of their own, off the event
loop. A window leaves the table only after its rows were written.

When ClickHouse does not take writes, closed windows stay in the table and
the agent goes on merging partials until ``max_unwritten_windows`` wait; then
it stops taking partials (backpressure: faust pauses the monitor partition
once its small buffer fills, and the partials wait in Kafka) and retries
until the writes go through. Scoring does not stop for it.

Each closed window is written in this order: its rows to ClickHouse, then its
alert records to ``{p}.alerts``, then the window leaves the table together
with the new set of open alerts (one table write). A failure anywhere keeps
the window for the next turn; the retry writes the same rows and records
again, which ClickHouse's ReplacingMergeTree and the alert ids make harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import faust
from confluent_kafka import Producer

from stream.errors import ServiceError, SinkUnavailable
from stream.models.registry import ModelRegistry
from stream.monitor.alerts import Alert, track, window_facts
from stream.monitor.drift import feature_drift
from stream.monitor.histograms import latency_quantile
from stream.monitor.position import PROCESS, REWIND, ReadPosition, resume_offset
from stream.monitor.windows import (
    DRIFT_COLUMNS,
    LATENCY_COLUMNS,
    ClosedWindow,
    Partial,
    count_due,
    drift_rows,
    due_windows,
    latency_row,
    mark_closed,
    merge_partial,
    new_state,
)
from stream.quality.job import QualityJob
from stream.settings import PipelineConfig
from stream.sinks.clickhouse import ClickHouseSink
from stream.sinks.copier import TopicCopier

log = logging.getLogger(__name__)


class MonitorAgent:
    def __init__(
        self,
        app: faust.App,
        pipeline: PipelineConfig,
        registry: ModelRegistry,
        sink: ClickHouseSink,
        writer: ThreadPoolExecutor,
        kafka_config: dict[str, Any],
        copier: TopicCopier | None = None,
    ) -> None:
        self.app = app
        self.pipeline = pipeline
        self.copier = copier  # the worker's, which copies this pipeline's alerts to ClickHouse
        self.registry = registry
        self.sink = sink
        self._writer = writer
        self._kafka_config = kafka_config
        self._producer: Producer | None = None  # created on the writer thread, used only there
        self.windows_written = 0
        self.late_partials = 0
        self.events_merged = 0
        self.duplicate_partials = 0
        self.bad_partials = 0
        self.write_failures = 0
        self.alerts_published = 0
        self.open_alerts: dict[str, int] = {}  # per model version key
        self.closed_until: dict[str, int] = {}
        self.open_events: dict[str, int] = {}
        self.unwritten: dict[str, int] = {}
        self.paused_since: float | None = None
        self.paused_seconds = 0.0
        self._last_turn = time.monotonic()
        self._watermark = 0
        self._rebalancing_since: float | None = None
        self.position = ReadPosition()
        self._generation: int | None = None
        monitor = pipeline.monitor
        self._idle_after_ms = int((monitor.window_seconds + monitor.grace_seconds + 60) * 1000)
        self.topic = app.topic(
            pipeline.monitor_topic,
            key_serializer="raw",
            value_serializer="raw",
            partitions=1,
        )
        self.table = app.Table(
            f"{pipeline.name}-monitor-windows",
            default=None,
            partitions=1,
        )  # keys and values are JSON (faust's table default): "pipeline|model|version" -> state
        app.agent(self.topic, name=f"{pipeline.name}-monitor")(self._consume)
        # The worker that owns the monitor topic also computes quality from labels.
        self.quality = QualityJob(pipeline, registry)
        self.quality_failures = 0
        if pipeline.quality.log_sample_rate > 0:
            interval = max(min(monitor.window_seconds, 60.0), 1.0)
            app.timer(interval, name=f"{pipeline.name}-quality")(self._quality_tick)

    async def _consume(self, stream: Any) -> None:
        async for event in stream.events():
            try:
                if not await self._in_order(event.message.tp, event.message.offset):
                    continue
                await self.process(event.key.decode(), event.value, event.message.offset)
            except Exception as exc:
                # Never stop consuming silently: take the worker down so it restarts.
                log.exception("monitor agent of %s failed", self.pipeline.name)
                await self.app.crash(exc)
                raise

    async def _in_order(self, tp: Any, offset: int) -> bool:
        """Whether to merge the partial at ``offset`` (see ``stream.monitor.position``)."""
        self._last_turn = time.monotonic()
        generation = self.app.consumer_generation_id
        if generation != self._generation:
            self._generation = generation
            resume = resume_offset(
                (s for k in list(self.table) if (s := self.table.get(k))), self._idle_after_ms
            )
            if resume is not None:  # never wait for offsets the topic does not hold
                high = self.app.consumer.highwater(tp)
                if high is not None and high >= 0:
                    resume = min(resume, high)
                earliest = (await self.app.consumer.earliest_offsets(tp)).get(tp)
                if earliest is not None:
                    resume = max(resume, earliest)
            self.position.restart(resume)
        rewinds, given_up = self.position.rewinds, self.position.given_up
        decision = self.position.decide(offset, time.monotonic())
        if self.position.given_up > given_up:
            log.error(
                "%s: the monitor could not read the partials before offset %d again; "
                "windows may lack their events", self.pipeline.name, offset,
            )  # fmt: skip
        if decision == REWIND:
            assert self.position.expected is not None
            if self.position.rewinds > rewinds:
                log.warning(
                    "%s: the monitor read offset %d but its state ends before %d (committed "
                    "offsets passed partials the changelog lacks); reading again from %d",
                    self.pipeline.name, offset, self.position.expected, self.position.expected,
                )  # fmt: skip
            await self.app.consumer.seek_wait({tp: self.position.expected})
        return decision == PROCESS

    async def process(self, key: str, value: bytes, offset: int | None = None) -> None:
        self._last_turn = time.monotonic()
        try:
            partial = Partial.parse(json.loads(value))
        except (ValueError, KeyError, TypeError) as exc:
            self.bad_partials += 1
            log.warning("skipping a malformed partial on %s: %r", self.pipeline.monitor_topic, exc)
            return
        state = self.table.get(key) or new_state()
        outcome = merge_partial(state, partial)
        if outcome == "duplicate":
            self.duplicate_partials += 1
            return
        if offset is not None:
            state["offset"] = offset  # the state holds every partial up to here
        if outcome == "merged":
            self.events_merged += partial.stats.count
        if outcome == "late":
            self.late_partials += 1
            log.warning(
                "partial for %s:%s window %d arrived after the window was written and dropped "
                "from state; its %d events are not in the window's row",
                partial.model, partial.version, partial.window_start, partial.stats.count,
            )  # fmt: skip
        self.table[key] = state
        # All model versions of a pipeline share the engines' clock: a partial of
        # any of them moves every version's watermark, so the windows of a version
        # that no longer receives traffic (retired, rolled back) still close.
        self._watermark = max(self._watermark, int(state["watermark"]))
        await self._close_all_due(first=key)
        await self._hold_while_unwritten()

    async def _close_all_due(self, first: str | None = None) -> None:
        keys = [k for k in self.table if k != first]
        for key in [first, *keys] if first is not None else keys:
            await self._close_due(key)

    async def _hold_while_unwritten(self) -> None:
        """Backpressure: take no partial while more closed windows wait than the bound."""
        bound = self.pipeline.monitor.max_unwritten_windows
        if sum(self.unwritten.values()) <= bound:
            return
        loop = asyncio.get_running_loop()
        self.paused_since = loop.time()
        log.error(
            "%s: %d closed windows wait for ClickHouse (bound %d); "
            "not reading partials until they are written",
            self.pipeline.name, sum(self.unwritten.values()), bound,
        )  # fmt: skip
        while sum(self.unwritten.values()) > bound:
            self._last_turn = time.monotonic()
            await asyncio.sleep(max(self.sink.wait_seconds(), 0.1))
            await self._close_all_due()
        paused = loop.time() - self.paused_since
        self.paused_seconds += paused
        self.paused_since = None
        log.warning("%s: reading partials again after %.1fs", self.pipeline.name, paused)

    async def _close_due(self, key: str) -> None:
        state = self.table.get(key)
        if state is None:
            return
        state["watermark"] = max(int(state["watermark"]), self._watermark)
        grace_ms = int(self.pipeline.monitor.grace_seconds * 1000)
        pipeline, model, version = key.split("|", 2)
        if self.sink.wait_seconds() > 0:  # no write while the sink holds tries back
            self.unwritten[key] = count_due(state, grace_ms)
        else:
            self.unwritten[key] = await self._write_due(key, state, (pipeline, model, version))
        self.open_events[key] = sum(
            int(entry["stats"]["count"]) for entry in state["open"].values() if entry["stats"]
        )

    async def _write_due(self, key: str, state: dict[str, Any], ident: tuple[str, str, str]) -> int:
        """Write the due windows of ``key`` oldest first; return how many are left unwritten."""
        due = due_windows(state, ident, int(self.pipeline.monitor.grace_seconds * 1000))
        written = 0
        for window in due:
            try:
                alerts = await self._write(window, state.get("alerts", {}))
            except Exception as exc:
                # Keep the window in the table; a later turn writes it.
                self.write_failures += 1
                if not isinstance(exc, SinkUnavailable):
                    log.error("could not write window %d of %s: %r", window.start_ms, key, exc)
                break
            mark_closed(state, window)
            state["alerts"] = alerts
            self.open_alerts[key] = len(alerts)
            written += 1
            self.windows_written += 1
            self.closed_until[key] = int(state["closed_until"])
        if written:
            self.table[key] = state
        return len(due) - written

    async def _write(
        self, window: ClosedWindow, open_alerts: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Write the window's rows and alert records; return the open alerts after it."""
        spec = self.pipeline.monitor
        manifest = self.registry.manifest(window.model, window.version)
        now = datetime.now(UTC)
        drift = feature_drift(manifest, window.stats, spec)
        latency = [latency_row(window, manifest, now)]
        alerts: list[Alert] = []
        if window.revision == 0:  # a re-write after late partials changes no alert
            facts = window_facts(
                window.pipeline, window.model, window.version, window.variant, window.start_ms,
                window.end_ms, drift, window.stats.count,
                latency_quantile(window.stats.latency, 0.99), spec, window.stats.cpu_seconds,
            )  # fmt: skip
            open_alerts, alerts = track(open_alerts, facts)
        loop = asyncio.get_running_loop()
        rows = drift_rows(window, drift, now)
        await loop.run_in_executor(self._writer, self._insert, latency, rows, alerts)
        return open_alerts

    def _insert(
        self, latency: list[list[Any]], drift: list[list[Any]], alerts: list[Alert]
    ) -> None:
        self.sink.insert("latency_windows", LATENCY_COLUMNS, latency)
        self.sink.insert("drift_windows", DRIFT_COLUMNS, drift)
        if alerts:
            self._publish(alerts)

    def _publish(self, alerts: list[Alert]) -> None:
        """Alert records to ``{p}.alerts``, acknowledged; the alerts agent copies them on."""
        if self._producer is None:
            self._producer = Producer(
                {**self._kafka_config, "enable.idempotence": True, "linger.ms": 5}
            )
        failures: list[str] = []
        for alert in alerts:
            log.warning("alert %s (%s): %s", alert.state, alert.severity, alert.message)
            self._producer.produce(
                self.pipeline.alerts_topic,
                key=alert.alert_id.encode(),
                value=json.dumps(alert.record()).encode(),
                on_delivery=lambda err, _: failures.append(str(err)) if err else None,
            )
        if self._producer.flush(10) or failures:
            raise ServiceError(f"could not publish alerts: {failures or 'timed out'}")
        self.alerts_published += len(alerts)

    async def _quality_tick(self) -> None:
        if not self._owns_topic() or self.app.rebalancing or self.sink.wait_seconds() > 0:
            return
        now = datetime.now(UTC)
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(
                self._writer, self.sink.run, lambda client: self.quality.run(client, now)
            )
            if done.alerts:
                await loop.run_in_executor(self._writer, self._publish, done.alerts)
            self.quality.commit(done)
        except (SinkUnavailable, ServiceError) as exc:
            # The windows stay due: a later tick computes them (labels are in ClickHouse).
            self.quality_failures += 1
            log.warning("%s: quality not computed this time: %s", self.pipeline.name, exc)

    def trouble(self, stall_after: float) -> str | None:
        """Why the agent cannot be trusted to make progress, or None while it is fine.

        Engines send a partial (a heartbeat when idle) every flush interval, so
        an agent that owns the monitor topic takes one every second or so, or
        turns its backpressure loop. Silence for ``stall_after`` means it hangs.
        """
        now = time.monotonic()
        if self.app.rebalancing:
            # Recovering the table from its changelog (a few records) takes seconds;
            # faust can wait for changelog records that never come, and never ends it.
            if self._rebalancing_since is None:
                self._rebalancing_since = now
            self._last_turn = now
            stuck = now - self._rebalancing_since
            if stuck > stall_after:
                return f"monitor of {self.pipeline.name} has been rebalancing for {stuck:.0f}s"
            return None
        self._rebalancing_since = None
        if not self._owns_topic():
            self._last_turn = now
            return None
        silent = now - self._last_turn
        if silent > stall_after:
            return f"monitor of {self.pipeline.name} took no partial for {silent:.0f}s"
        return None

    def _owns_topic(self) -> bool:
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # no consumer yet, or it is being replaced
            return False
        return any(tp.topic == self.pipeline.monitor_topic for tp in assignment)

    def status(self) -> dict[str, Any]:
        return {
            "windows_written": self.windows_written,
            "closed_until": self.closed_until,
            "open_events": self.open_events,
            "events_merged": self.events_merged,
            "owns_topic": self._owns_topic(),
            "late_partials": self.late_partials,
            "duplicate_partials": self.duplicate_partials,
            "bad_partials": self.bad_partials,
            "write_failures": self.write_failures,
            "unwritten_windows": sum(self.unwritten.values()),
            "paused": self.paused_since is not None,
            "paused_seconds": round(self.paused_seconds, 1),
            "rewinds": self.position.rewinds,
            "partials_skipped": self.position.skipped,
            "open_alerts": sum(self.open_alerts.values()),
            "alerts_published": self.alerts_published,
            "alerts_copied": (
                self.copier.copied.get(self.pipeline.alerts_topic, 0) if self.copier else 0
            ),
            "quality_runs": self.quality.runs,
            "quality_windows": self.quality.windows_written,
            "quality_failures": self.quality_failures,
        }
