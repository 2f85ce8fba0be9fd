"""Applies deployment states to a worker's engines: load, verify, warm up, then offer."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from stream.deploy.control import EVENTS_TOPIC, model_event, publish
from stream.deploy.state import DeploymentState
from stream.engine.runtime import build_runtime
from stream.engine.scoring import ScoringEngine
from stream.errors import ModelLoadError, ServiceError
from stream.models.registry import ModelRegistry
from stream.monitor.alerts import rejection_alert

log = logging.getLogger(__name__)


class Deployer:
    """Called with every state read from ``stream.control`` (on the control thread).

    A revision whose models all load is offered to the engine, which swaps it
    in between two batches and reports ``applied``. A revision with a model
    that fails to load is reported ``rejected`` with the reason and an alert;
    the engine keeps serving what it served.
    """

    def __init__(
        self,
        engines: dict[str, ScoringEngine],
        registry: ModelRegistry,
        kafka_config: dict[str, Any],
    ) -> None:
        self.engines = engines
        self.registry = registry
        self.kafka_config = kafka_config

    def apply(self, state: DeploymentState) -> None:
        engine = self.engines.get(state.pipeline)
        if engine is None or state.current.revision <= engine.runtime.revision:
            return
        try:
            runtime = build_runtime(
                engine.pipeline, state.current, self.registry, previous=engine.runtime
            )
        except ModelLoadError as exc:
            self._reject(engine, state, str(exc))
            return
        engine.offer(runtime)

    def _reject(self, engine: ScoringEngine, state: DeploymentState, reason: str) -> None:
        pipeline = engine.pipeline
        revision = state.current.revision
        engine.counters.revisions_rejected += 1
        log.error("%s revision %d rejected: %s", pipeline.name, revision, reason)
        models = ",".join(sorted(str(k) for k in state.current.models()))
        event = model_event(pipeline.name, revision, engine.worker_id, "rejected", reason, models)
        at_ms = int(datetime.fromisoformat(event["at"]).timestamp() * 1000)
        notice = rejection_alert(pipeline.name, revision, engine.worker_id, models, reason, at_ms)
        alert = {**notice.record(), "revision": revision, "worker": engine.worker_id}
        try:
            # The alert first: whoever sees the rejection can already find it.
            publish(self.kafka_config, pipeline.alerts_topic, pipeline.name, alert)
            publish(self.kafka_config, EVENTS_TOPIC, pipeline.name, event)
        except ServiceError as exc:
            log.error("could not report the rejection: %s", exc)
