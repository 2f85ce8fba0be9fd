"""A worker's retraining jobs: requests on ``{p}.retrain`` (from ``retrain.trigger`` or
``stream models retrain --request``), each run in a process of its own.

One consumer in the group ``stream.{p}.retrain`` follows ``{p}.alerts`` (for the
trigger) and ``{p}.retrain`` (both one partition, so one worker of the group
has each). A request is read, the labeled events are read from ClickHouse on
the worker's writer thread, and ``stream.retrain.offline`` trains, judges and
registers in a child process while this loop goes on polling (the request's
partition paused). Its offset is committed when the job ended, so a worker
that dies in the middle leaves the request to the next one. Alert offsets are
committed up to the oldest alert the trigger still watches, so a restart
rebuilds what is open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from stream.background import BackgroundLoop
from stream.deploy.commands import current_state
from stream.deploy.control import publish
from stream.errors import SinkUnavailable, StreamError
from stream.models.registry import ModelRegistry
from stream.retrain import offline
from stream.retrain.dataset import read_labeled_events
from stream.retrain.job import Candidate, announce, write_validations
from stream.retrain.trigger import RetrainRequest, RetrainTrigger
from stream.services.readback import read_to_end
from stream.settings import PipelineConfig
from stream.sinks.clickhouse import ClickHouseSink

log = logging.getLogger(__name__)

RETRY_SECONDS = 10.0


def publish_request(
    kafka_config: dict[str, Any], pipeline: PipelineConfig, request: RetrainRequest
) -> None:
    publish(kafka_config, pipeline.retrain_topic, pipeline.name, request.record())


@dataclass
class RunningJob:
    request: RetrainRequest
    offset: int
    folder: Path
    process: subprocess.Popen[bytes]
    revision: int


class RetrainJobs(BackgroundLoop):
    def __init__(
        self,
        pipeline: PipelineConfig,
        kafka_config: dict[str, Any],
        registry: ModelRegistry,
        sink: ClickHouseSink,
        writer: ThreadPoolExecutor,
        stall_after: float,
    ) -> None:
        super().__init__(f"retrain-{pipeline.name}", stall_after)
        self.pipeline = pipeline
        self._kafka_config = kafka_config
        self._registry = registry
        self._sink = sink
        self._writer = writer
        self.trigger = RetrainTrigger(pipeline) if pipeline.retrain.trigger else None
        self.job: RunningJob | None = None
        self._pending: tuple[RetrainRequest, int] | None = None  # read, its job not started
        self._retry_at = 0.0
        self.counts = {"requests": 0, "passed": 0, "rejected": 0, "failed": 0}
        self.last_error = ""

    def status(self) -> dict[str, Any]:
        return {
            **self.counts,
            "running": self.job is not None,
            "waiting": self._pending is not None,
            "watching": len(self.trigger.open) if self.trigger else 0,
            "last_error": self.last_error,
        }

    def _loop(self) -> None:
        p = self.pipeline
        if self.trigger is not None:
            history = read_to_end(self._kafka_config, [p.retrain_topic])[p.retrain_topic]
            for message in history:
                request = _request(message)
                if request is not None:
                    self.trigger.observe_request(request)
        consumer = Consumer(
            {
                **self._kafka_config,
                "group.id": f"stream.{p.name}.retrain",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        topics = [p.retrain_topic] + ([p.alerts_topic] if self.trigger else [])
        consumer.subscribe(topics)
        try:
            while not self.stopping:
                self.beat()
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    self._handle(consumer, message)
                self._try_start(consumer)
                self._check_job(consumer)
                self._ask(consumer)
        finally:
            if self.job is not None:
                self.job.process.kill()
                shutil.rmtree(self.job.folder, ignore_errors=True)
            consumer.close()

    def _handle(self, consumer: Consumer, message: Message) -> None:
        p = self.pipeline
        offset = message.offset() or 0
        if message.topic() == p.alerts_topic and self.trigger is not None:
            with contextlib.suppress(ValueError):  # not JSON: not an alert record
                self.trigger.observe_alert(json.loads(message.value() or b""), offset)
            oldest = self.trigger.oldest_offset()
            keep = offset + 1 if oldest is None else oldest
            consumer.commit(offsets=[TopicPartition(p.alerts_topic, 0, keep)], asynchronous=True)
            return
        request = _request(message)
        if request is None:
            consumer.commit(message=message, asynchronous=False)
            return
        if self.trigger is not None:
            self.trigger.observe_request(request)
        self.counts["requests"] += 1
        consumer.pause([TopicPartition(p.retrain_topic, 0)])
        self._pending = (request, offset)
        self._try_start(consumer)

    def _try_start(self, consumer: Consumer) -> None:
        """Start the pending request's job; while ClickHouse is away, try again later."""
        if self._pending is None or time.monotonic() < self._retry_at:
            return
        request, offset = self._pending
        try:
            self.job = self._start(request, offset)
        except SinkUnavailable as exc:
            self._retry_at = time.monotonic() + RETRY_SECONDS
            log.warning("%s: retraining waits for ClickHouse: %s", self.pipeline.name, exc)
            return
        except StreamError as exc:
            self._failed(consumer, request, offset, str(exc))
        self._pending = None

    def _start(self, request: RetrainRequest, offset: int) -> RunningJob:
        p = self.pipeline
        state = current_state(self._kafka_config, p).current
        champion = state.serving[0].model
        until = datetime.now(UTC)
        since = until - timedelta(hours=p.retrain.lookback_hours)
        reference = self._registry.manifest(champion.name, champion.version)
        segments = p.quality.segments
        events = self._writer.submit(
            self._sink.run,
            lambda c: read_labeled_events(c, p.name, reference, segments, since, until),
        ).result()
        folder = Path(tempfile.mkdtemp(prefix=f"retrain-{p.name}-"))
        offline.write_job(folder, p, champion, events)
        log.info("%s: retraining against %s (%s)", p.name, champion, request.reason)
        process = subprocess.Popen([sys.executable, "-m", "stream.retrain.offline", str(folder)])
        return RunningJob(request, offset, folder, process, state.revision)

    def _check_job(self, consumer: Consumer) -> None:
        job = self.job
        if job is None or job.process.poll() is None:
            return
        self.job = None
        result = offline.read_result(job.folder)
        shutil.rmtree(job.folder, ignore_errors=True)
        if "error" in result:
            self._failed(consumer, job.request, job.offset, str(result["error"]))
            return
        name, _, version = str(result["candidate"]).partition(":")
        gate = offline.gate_of(result)
        try:
            manifest = self._registry.manifest(name, version)
            self._writer.submit(
                self._sink.run, lambda c: write_validations(c, self.pipeline.name, manifest, gate)
            ).result()
            candidate = Candidate(manifest, self._registry.folder(name, version), gate,
                                  int(result["train_rows"]))  # fmt: skip
            announce(
                self._kafka_config, self.pipeline, self._registry, candidate,
                self.pipeline.retrain.trainer, job.revision, job.request.requested_by,
                job.request.reason,
            )  # fmt: skip
        except StreamError as exc:
            # The candidate is registered; what is missing is said once, not retried.
            self._failed(consumer, job.request, job.offset, f"{name}:{version}: {exc}")
            return
        self.counts["passed" if gate.passed else "rejected"] += 1
        self._done(consumer, job.offset)

    def _failed(self, consumer: Consumer, request: RetrainRequest, offset: int, why: str) -> None:
        log.error("%s: retraining failed: %s", self.pipeline.name, why)
        self.counts["failed"] += 1
        self.last_error = why
        self._done(consumer, offset)

    def _done(self, consumer: Consumer, offset: int) -> None:
        tp = TopicPartition(self.pipeline.retrain_topic, 0, offset + 1)
        consumer.commit(offsets=[tp], asynchronous=False)
        consumer.resume([TopicPartition(self.pipeline.retrain_topic, 0)])

    def _ask(self, consumer: Consumer) -> None:
        if self.trigger is None:
            return
        request = self.trigger.due(int(time.time() * 1000))
        if request is not None:
            log.warning("%s: asking for a retraining: %s", self.pipeline.name, request.reason)
            publish_request(self._kafka_config, self.pipeline, request)


def _request(message: Message) -> RetrainRequest | None:
    try:
        return RetrainRequest.parse(json.loads(message.value() or b""))
    except (ValueError, KeyError, TypeError):
        log.error("ignoring an unreadable retraining request at offset %d", message.offset())
        return None
