"""BatchScorer: one batch of records → predictions, review items, shadow scores, dead letters.

Every record ends as exactly one prediction or one dead letter (plus a review
item when its confidence is low). Routing sends each event to one serving
model version; shadows score the same events on the side. Kafka-free, so it
is unit-tested with a fake writer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.engine.batching import Record
from stream.engine.features import FeatureRows
from stream.engine.outputs import OutputWriter, dead_letter_headers
from stream.engine.partials import PartialAccumulator
from stream.engine.runtime import Runtime, ServingModel
from stream.errors import (
    EventContext,
    EventError,
    ModelError,
    UnknownCategory,
    ValidationError,
    ValueDecodeError,
)
from stream.models.key import ModelKey
from stream.models.runtime import Prediction
from stream.quality.logbatch import MAX_ROWS, PredictionLogBatch
from stream.serde import Serde, SerdeContext
from stream.serde.columnar import take
from stream.settings import PipelineConfig

log = logging.getLogger(__name__)


@dataclass
class EngineCounters:
    consumed: int = 0
    predictions: int = 0
    reviews: int = 0
    dead_letters: int = 0
    shadow_predictions: int = 0
    fallbacks: int = 0
    batches: int = 0
    commits: int = 0
    revision: int = 0
    last_scored_ms: int = 0
    assigned: list[str] = field(default_factory=list)
    assigned_at: float = 0.0  # wall clock of the latest assignment, seconds
    lag: dict[str, int] = field(default_factory=dict)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    revisions_applied: int = 0
    revisions_rejected: int = 0


@dataclass(frozen=True)
class EngineSerdes:
    events: Serde
    predictions: Serde
    review: Serde


@dataclass
class Routed:
    """Events on their way to one model version: record i was decoded as event i and
    goes to the model as variant i."""

    records: list[Record]
    events: Sequence[Mapping[str, Any]]  # decoded columns (EventColumns) or dicts
    variants: list[str]

    def __len__(self) -> int:
        return len(self.records)

    def take(self, index: list[int], variant: str | None = None) -> Routed:
        """The events at ``index``, in that order (all as ``variant`` where given)."""
        variants = [self.variants[i] for i in index] if variant is None else [variant] * len(index)
        return Routed([self.records[i] for i in index], take(self.events, index), variants)


class CpuLedger:
    """Hands out the process's CPU time, each second once, to the batch that takes it.

    Every engine of the process takes what the process used since anyone last
    took (its own batch, librdkafka's threads, the faust loop, idle time), so
    the costs of all engines add up to the process's CPU time.
    """

    def __init__(self, clock: Callable[[], float] = time.process_time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()

    def take(self) -> float:
        with self._lock:
            now = self._clock()
            spent, self._last = now - self._last, now
        return max(spent, 0.0)


PROCESS_CPU = CpuLedger()


class BatchScorer:
    def __init__(
        self,
        pipeline: PipelineConfig,
        runtime: Runtime,
        serdes: EngineSerdes,
        writer: OutputWriter,
        worker: str,
        clock: Callable[[], float] = time.time,
        cpu: CpuLedger = PROCESS_CPU,
    ) -> None:
        self.pipeline = pipeline
        self.runtime = runtime
        self.serdes = serdes
        self.writer = writer
        self.worker = worker
        self.counters = EngineCounters()
        self.accumulators: dict[ModelKey, PartialAccumulator] = {}
        self._clock = clock
        self._cpu = cpu
        self._scored: dict[ModelKey, int] = {}  # events per model version in the batch
        self.log = PredictionLogBatch(pipeline)
        self._window_ms = int(pipeline.monitor.window_seconds * 1000)
        self.swap(runtime)
        self._events_ctx = SerdeContext(pipeline.events_topic)
        self._pred_ctx = SerdeContext(pipeline.predictions_topic)
        self._review_ctx = SerdeContext(pipeline.review_topic)

    def swap(self, runtime: Runtime) -> None:
        """Serve the next batch with ``runtime``; open windows of every model stay as they are."""
        self.runtime = runtime
        self.counters.revision = runtime.revision
        # Every model of the revision emits partials (empty ones when idle), so
        # the monitor's windows close on time even without traffic. The role a
        # version plays is set here, once per revision, not on every batch.
        for serving in runtime.models.values():
            self.accumulator(serving).variant = runtime.variant_of(serving.key)

    def accumulator(self, serving: ServingModel) -> PartialAccumulator:
        acc = self.accumulators.get(serving.key)
        if acc is None:
            acc = PartialAccumulator(
                self.pipeline.name, serving.model.manifest, self._window_ms, self.worker
            )
            self.accumulators[serving.key] = acc
        return acc

    def score(self, records: list[Record]) -> None:
        runtime = self.runtime
        limit = self.pipeline.input.max_event_bytes
        kept: list[Record] = []
        payloads: list[bytes] = []
        for record in records:
            value = record.value()
            if value and len(value) <= limit:
                kept.append(record)
                payloads.append(value)
                continue
            error: EventError = ValueDecodeError("empty payload")
            if value:
                error = ValidationError(
                    f"payload of {len(value)} bytes exceeds input.max_event_bytes={limit}"
                )
            error.ctx = _context(record)
            self.dead_letter(record, error)
        events, failures = self.serdes.events.deserialize_many(payloads, self._events_ctx)
        if failures:
            failed = {i for i, _ in failures}
            for i, exc in failures:
                exc.ctx = _context(kept[i])
                self.dead_letter(kept[i], exc)
            kept = [record for i, record in enumerate(kept) if i not in failed]
        self.counters.consumed += len(records)
        self.counters.batches += 1
        if kept:
            self._route(runtime, kept, events)
        self._attribute_cpu(runtime)
        if self.log.rows >= MAX_ROWS:
            self.flush_log()

    def flush_log(self) -> None:
        """Produce the prediction log's rows so far: before the outputs are acknowledged."""
        for message in self.log.drain():
            self.writer.produce(self.pipeline.log_topic, message)

    def _route(
        self, runtime: Runtime, kept: list[Record], events: Sequence[Mapping[str, Any]]
    ) -> None:
        """Score each decoded event with the version it is routed to, and the shadows."""
        only = runtime.router.only
        if only is not None:
            model, variant = only
            groups = {model: Routed(kept, events, [variant] * len(kept))}
        else:
            id_field = self.pipeline.input.event_id_field
            route = runtime.router.route
            chosen: dict[ModelKey, tuple[list[int], list[str]]] = {}
            for i, record in enumerate(kept):
                event = events[i]
                key = record.key() or str(event.get(id_field, "")).encode()
                model, variant = route(key, event)
                index, variants = chosen.setdefault(model, ([], []))
                index.append(i)
                variants.append(variant)
            groups = {
                model: Routed([kept[i] for i in index], take(events, index), variants)
                for model, (index, variants) in chosen.items()
            }
        for model, routed in groups.items():
            self._score_group(runtime, runtime.models[model], routed, shadow=False)
        for shadow in runtime.snapshot.shadows:
            routed = Routed(kept, events, ["shadow"] * len(kept))
            self._score_group(runtime, runtime.models[shadow], routed, shadow=True)

    def _attribute_cpu(self, runtime: Runtime) -> None:
        """Share the CPU time since the last batch among the versions that scored, by events.

        A batch that scored nothing (all dead letters) leaves it to the next one.
        """
        scored, self._scored = self._scored, {}
        total = sum(scored.values())
        if not total:
            return
        spent = self._cpu.take()
        now_ms = int(self._clock() * 1000)
        for key, n in scored.items():
            serving = runtime.models.get(key)
            if serving is not None:
                self.accumulator(serving).window(now_ms).cpu_seconds += spent * n / total

    def _score_group(
        self, runtime: Runtime, serving: ServingModel, routed: Routed, shadow: bool
    ) -> None:
        rows = serving.features.rows(routed.events)
        if rows.rejected:
            for i, exc in rows.rejected:
                if shadow:  # a shadow skips what it cannot read; the event was scored
                    continue
                record = routed.records[i]
                exc.ctx = _context(record)
                self.dead_letter(record, exc)
                if isinstance(exc, UnknownCategory):
                    stats = self.accumulator(serving).window(int(self._clock() * 1000))
                    stats.unseen[exc.feature] += 1
            routed = routed.take(rows.accepted)
        if not routed:
            return
        model_input = serving.features.model_input(rows.raw)
        started = time.perf_counter()
        try:
            prediction = serving.model.predict(model_input)
        except Exception as exc:
            log.warning("model %s failed on a batch of %d: %r", serving.key, len(routed), exc)
            self._score_one_by_one(runtime, serving, routed, rows, model_input, shadow)
            return
        inference_ms = (time.perf_counter() - started) * 1000.0 / len(routed)
        self._emit(serving, routed, rows, prediction, inference_ms, shadow)

    def _score_one_by_one(
        self,
        runtime: Runtime,
        serving: ServingModel,
        routed: Routed,
        rows: FeatureRows,
        model_input: np.ndarray,
        shadow: bool,
    ) -> None:
        """After a failed batch: score one by one; failures go to the fallback or dead letter."""
        failed: list[int] = []
        errors: list[str] = []
        for i in range(len(routed)):
            started = time.perf_counter()
            try:
                prediction = serving.model.predict(model_input[i : i + 1])
            except Exception as exc:
                failed.append(i)
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            inference_ms = (time.perf_counter() - started) * 1000.0
            self._emit(serving, routed.take([i]), rows.take(i), prediction, inference_ms, shadow)
        if shadow or not failed:
            return
        fallback = runtime.snapshot.fallback
        if fallback is not None and fallback != serving.key:
            self.counters.fallbacks += len(failed)
            again = routed.take(failed, variant="fallback")
            self._score_group(runtime, runtime.models[fallback], again, shadow=False)
            return
        for i, message in zip(failed, errors, strict=True):
            record = routed.records[i]
            error = ModelError(message, _context(record), serving.key.name, serving.key.version)
            self.dead_letter(record, error)

    def _emit(
        self,
        serving: ServingModel,
        routed: Routed,
        rows: FeatureRows,
        prediction: Prediction,
        inference_ms: float,
        shadow: bool,
    ) -> None:
        """Predictions and review items; row i of ``rows`` is event i of ``routed``."""
        manifest = serving.model.manifest
        labels = manifest.output.labels
        now_ms = int(self._clock() * 1000)
        threshold = self.pipeline.review_threshold
        topic = self.pipeline.shadow_topic if shadow else self.pipeline.predictions_topic
        records = routed.records
        variants = routed.variants
        keys = [record.key() for record in records]
        times = rows.event_times
        if None in times:  # no event time in the event: the record's timestamp
            times = [
                r.timestamp()[1] if t is None else t for r, t in zip(records, times, strict=True)
            ]
        event_times = np.array(times, dtype=np.int64)
        latencies = np.maximum(now_ms - event_times, 0).astype(np.float64)
        # The outputs are written a column at a time (``Serde.serialize_many``).
        label_indexes = prediction.label_index.tolist()
        out_labels = [
            labels[index] if index >= 0 else repr(score)
            for index, score in zip(label_indexes, prediction.score.tolist(), strict=True)
        ]
        n = len(routed)
        columns = {
            "event_id": rows.event_ids,
            "key": keys,
            "variant": variants,
            "label": out_labels,
            "score": prediction.score,
            "probabilities": prediction.probabilities,
            "confidence": prediction.confidence,
            "event_time": event_times,
            "latency_ms": latencies,
        }
        constants = {
            "pipeline": self.pipeline.name,
            "model_name": manifest.name,
            "model_version": manifest.version,
            "scored_time": now_ms,
            "inference_ms": inference_ms,
        }
        values = self.serdes.predictions.serialize_many(columns, constants, n, self._pred_ctx)
        reviews = 0
        if not shadow:
            low = np.flatnonzero(prediction.confidence < threshold).tolist()
            reviews = len(low)
            if low:
                self._review(records, columns, constants, low, threshold)
        self.writer.produce_all(topic, values, keys)
        self._scored[serving.key] = self._scored.get(serving.key, 0) + len(routed)
        if self.log.enabled:
            self.log.add(
                manifest.name,
                manifest.version,
                keys,
                rows.event_ids,
                variants,
                out_labels,
                prediction.score,
                prediction.confidence,
                event_times,
                now_ms,
                latencies,
                manifest.feature_names,
                rows.raw,
                routed.events,
            )
        acc = self.accumulator(serving)
        acc.layout.fold(
            acc.window(now_ms),
            rows.raw,
            latencies,
            inference_ms,
            prediction.label_index,
            prediction.score,
            prediction.confidence,
            reviews,
        )
        if shadow:
            self.counters.shadow_predictions += len(routed)
            return
        self.counters.predictions += len(routed)
        self.counters.reviews += reviews
        self.counters.last_scored_ms = now_ms

    def _review(
        self,
        records: list[Record],
        predictions: dict[str, Any],
        constants: dict[str, Any],
        low: list[int],
        threshold: float,
    ) -> None:
        """Review items of the predictions at ``low`` (of ``records``, ``predictions``)."""
        records = [records[i] for i in low]
        columns = {
            "event_id": [predictions["event_id"][i] for i in low],
            "label": [predictions["label"][i] for i in low],
            "score": predictions["score"][low],
            "confidence": predictions["confidence"][low],
            "event": [record.value() or b"" for record in records],
        }
        item = {
            "pipeline": constants["pipeline"],
            "model_name": constants["model_name"],
            "model_version": constants["model_version"],
            "threshold": threshold,
            "reason": "low_confidence",
            "scored_time": constants["scored_time"],
        }
        values = self.serdes.review.serialize_many(columns, item, len(low), self._review_ctx)
        self.writer.produce_all(self.pipeline.review_topic, values, [r.key() for r in records])

    def dead_letter(self, record: Record, error: EventError) -> None:
        self.writer.produce(
            self.pipeline.deadletter_topic,
            record.value() or b"",
            key=record.key(),
            headers=dead_letter_headers(record, error),
        )
        self.counters.dead_letters += 1
        reasons = self.counters.dead_letter_reasons
        reasons[error.reason] = reasons.get(error.reason, 0) + 1


def _context(record: Record) -> EventContext:
    return EventContext(record.topic() or "", record.partition() or 0, record.offset() or 0)
