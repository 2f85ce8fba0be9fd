"""What ``stream models deploy|undeploy|rollback|status`` do, without the printing."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stream.deploy.control import (
    EVENTS_TOPIC,
    current_actor,
    engine_workers,
    ensure_control_topics,
    publish_state,
    read_states,
    record_step,
    wait_for_acks,
)
from stream.deploy.state import DeploymentState, initial_state
from stream.errors import SettingsError
from stream.models.registry import ModelRegistry
from stream.services.readback import end_offsets, read_to_end
from stream.services.topics import wait_for_broker
from stream.settings import PipelineConfig


@dataclass(frozen=True)
class ChangeResult:
    before: DeploymentState
    after: DeploymentState
    workers: set[str]
    answers: dict[str, dict[str, Any]]

    @property
    def complete(self) -> bool:
        """Every engine in the group applied the new revision."""
        return all(self.answers.get(w, {}).get("kind") == "applied" for w in self.workers)


def current_state(kafka_config: dict[str, Any], pipeline: PipelineConfig) -> DeploymentState:
    wait_for_broker(kafka_config)
    ensure_control_topics(kafka_config)
    states, _ = read_states(kafka_config)
    return states.get(pipeline.name) or initial_state(pipeline.name, pipeline.model)


def change_deployment(
    kafka_config: dict[str, Any],
    pipeline: PipelineConfig,
    change: Callable[[DeploymentState], DeploymentState],
    registry: ModelRegistry | None,
    timeout: float = 30.0,
    actor: str = "",
    reason: str = "",
    force: bool = False,
) -> ChangeResult:
    """Publish ``change(current state)`` and wait until the running engines answer.

    With a registry, every model the change adds is loaded here first (checksum,
    signature, warm-up): a model that fails is refused before any worker sees it,
    and so is a candidate the retraining gate rejected, unless ``force``. The
    change goes on the record (``model_events``) with ``actor`` and ``reason``.
    """
    before = current_state(kafka_config, pipeline)
    after = change(before)
    if registry is not None:
        for key in sorted(after.current.models() - before.current.models(), key=str):
            manifest = registry.manifest(key.name, key.version)
            if manifest.rejected and not force and manifest.validation is not None:
                why = "; ".join(manifest.validation.reasons) or "see model_validations"
                raise SettingsError(
                    str(key), f"was rejected by the retraining gate ({why}); --force deploys it"
                )
            registry.load(key.name, key.version).unload()
    workers = engine_workers(kafka_config, pipeline.name)
    start = end_offsets(kafka_config, EVENTS_TOPIC)
    publish_state(kafka_config, after)
    current = after.current
    record_step(
        kafka_config, pipeline.name, current.revision, "changed", current.change,
        current.describe(), actor or current_actor(), reason + (" (forced)" if force else ""),
    )  # fmt: skip
    answers = {}
    if workers:
        answers = wait_for_acks(
            kafka_config, pipeline.name, after.current.revision, workers, start, timeout
        )
    return ChangeResult(before, after, workers, answers)


def worker_answers(kafka_config: dict[str, Any], pipeline: str) -> dict[str, dict[str, Any]]:
    """The latest model event of every worker that ever answered for ``pipeline``."""
    latest: dict[str, dict[str, Any]] = {}
    for message in read_to_end(kafka_config, [EVENTS_TOPIC])[EVENTS_TOPIC]:
        try:
            event = json.loads(message.value())
        except ValueError:
            continue
        if event.get("pipeline") == pipeline and event.get("worker"):
            latest[event["worker"]] = event
    return latest
