"""The control plane on Kafka: deployment states and the workers' answers to them.

``stream.control`` is compacted and keyed by pipeline, so its latest record
per pipeline is the deployment every worker converges to, also after a
restart. Workers report what they did with a revision (applied or rejected)
to ``stream.model-events``, which the CLI waits on and the monitor app
copies to ClickHouse ``model_events``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.background import BackgroundLoop
from stream.deploy.state import DeploymentState
from stream.errors import ServiceError
from stream.services.readback import end_offsets, read_to_end, read_topics

log = logging.getLogger(__name__)

CONTROL_TOPIC = "stream.control"
EVENTS_TOPIC = "stream.model-events"


def ensure_control_topics(kafka_config: dict[str, Any], replication: int = 1) -> None:
    admin = AdminClient(kafka_config)
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(CONTROL_TOPIC, 1, replication, config={"cleanup.policy": "compact"}),
        NewTopic(EVENTS_TOPIC, 1, replication),
    ]
    missing = [t for t in wanted if t.topic not in existing]
    for name, future in (admin.create_topics(missing) if missing else {}).items():
        try:
            future.result()
        except KafkaException as exc:
            if "already exists" not in str(exc):
                raise ServiceError(f"cannot create topic {name}: {exc}") from None


def read_states(kafka_config: dict[str, Any]) -> tuple[dict[str, DeploymentState], int]:
    """The latest state of every pipeline, and the offset after the last control record."""
    messages = read_to_end(kafka_config, [CONTROL_TOPIC])[CONTROL_TOPIC]
    states: dict[str, DeploymentState] = {}
    for message in messages:
        state = parse_state(message.value())
        if state is not None:
            states[state.pipeline] = state
    return states, end_offsets(kafka_config, CONTROL_TOPIC).get(0, 0)


def parse_state(value: bytes | None) -> DeploymentState | None:
    if not value:
        return None
    try:
        return DeploymentState.model_validate_json(value)
    except ValueError as exc:
        log.error("ignoring an unreadable record on %s: %s", CONTROL_TOPIC, exc)
        return None


def publish(kafka_config: dict[str, Any], topic: str, key: str, value: dict[str, Any]) -> None:
    producer = Producer({**kafka_config, "enable.idempotence": True})
    failures: list[str] = []
    producer.produce(
        topic,
        key=key.encode(),
        value=json.dumps(value).encode(),
        on_delivery=lambda err, _: failures.append(str(err)) if err else None,
    )
    if producer.flush(30) or failures:
        raise ServiceError(f"could not publish to {topic}: {failures or 'timed out'}")


def publish_state(kafka_config: dict[str, Any], state: DeploymentState) -> None:
    publish(kafka_config, CONTROL_TOPIC, state.pipeline, state.model_dump(mode="json"))


def model_event(
    pipeline: str,
    revision: int,
    worker: str,
    kind: str,
    message: str,
    models: str = "",
    actor: str = "",
    reason: str = "",
) -> dict[str, Any]:
    """A worker's answer to a revision (worker set), or a step an actor took (actor set)."""
    return {
        "pipeline": pipeline,
        "revision": revision,
        "worker": worker,
        "actor": actor,
        "kind": kind,
        "models": models,
        "message": message,
        "reason": reason,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


MODEL_EVENT_COLUMNS = (
    "pipeline", "revision", "worker", "actor", "kind", "models", "message", "reason", "at",
)  # fmt: skip


def model_event_row(event: dict[str, Any]) -> list[Any]:
    """A record of ``stream.model-events`` as a row of ClickHouse ``model_events``; events
    written before actor and reason existed have none."""
    at = datetime.fromisoformat(event["at"])
    return [*(event.get(c, "") for c in MODEL_EVENT_COLUMNS[:-1]), at]


def record_step(
    kafka_config: dict[str, Any],
    pipeline: str,
    revision: int,
    kind: str,
    message: str,
    models: str,
    actor: str,
    reason: str = "",
) -> None:
    """Put a step of the closed loop (deploy, retrain, gate, promotion) on the record:
    ``stream.model-events``, which the workers copy to ClickHouse ``model_events``."""
    event = model_event(pipeline, revision, "", kind, message, models, actor, reason)
    publish(kafka_config, EVENTS_TOPIC, pipeline, event)


def current_actor() -> str:
    """Who runs this command: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def engine_workers(kafka_config: dict[str, Any], pipeline: str) -> set[str]:
    """Worker ids of the engines now in the pipeline's consumer group."""
    admin = AdminClient(kafka_config)
    group = f"stream.{pipeline}.engine"
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except KafkaException:
        return set()
    return {m.client_id.removesuffix("-engine") for m in description.members}


def wait_for_acks(
    kafka_config: dict[str, Any],
    pipeline: str,
    revision: int,
    workers: set[str],
    start: dict[int, int],
    timeout: float,
) -> dict[str, dict[str, Any]]:
    """Model events of ``revision`` from each of ``workers`` (those that answered in time)."""
    answers: dict[str, dict[str, Any]] = {}
    read = 0

    def done(out: dict[str, list[Any]]) -> bool:
        nonlocal read
        for message in out[EVENTS_TOPIC][read:]:
            try:
                event = json.loads(message.value())
            except ValueError:
                continue
            if (
                event.get("pipeline") == pipeline
                and event.get("revision") == revision
                and event.get("worker")
            ):
                answers[event["worker"]] = event
        read = len(out[EVENTS_TOPIC])
        return workers <= set(answers)

    read_topics(kafka_config, {EVENTS_TOPIC: start}, done, timeout)
    return answers


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ControlWatcher(BackgroundLoop):
    """Follows ``stream.control`` from an offset and hands each new state to ``on_state``.

    Runs on a thread of its own; ``on_state`` loads models there, off the hot path.
    """

    def __init__(
        self,
        kafka_config: dict[str, Any],
        from_offset: int,
        on_state: Callable[[DeploymentState], None],
        stall_after: float = 120.0,
    ) -> None:
        super().__init__("control-watcher", stall_after)
        self._kafka_config = kafka_config
        self._from = from_offset
        self._on_state = on_state

    def _loop(self) -> None:
        consumer = Consumer(
            {
                **self._kafka_config,
                "group.id": f"stream-control-{worker_id()}",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.assign([TopicPartition(CONTROL_TOPIC, 0, self._from)])
            while not self.stopping:
                self.beat()
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                state = parse_state(message.value())
                if state is not None:
                    self._on_state(state)
        finally:
            consumer.close()
