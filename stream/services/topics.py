"""Topic administration: every topic a pipeline reads or writes exists before a worker starts."""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream.errors import ServiceError
from stream.settings import PipelineConfig

log = logging.getLogger(__name__)


def wait_for_broker(kafka_config: dict[str, Any], timeout: float = 15.0) -> None:
    """Raise a one-line ServiceError naming the setting when no broker answers."""
    admin = AdminClient({**kafka_config, "log_level": 0})
    deadline = time.monotonic() + timeout
    while True:
        try:
            if admin.list_topics(timeout=min(2.0, timeout)).brokers:
                return
        except KafkaException:
            pass
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"STREAM_KAFKA_BOOTSTRAP: no Kafka broker answered at "
                f"{kafka_config.get('bootstrap.servers')} within {timeout:.0f}s"
            )
        time.sleep(0.2)


def pipeline_topics(pipeline: PipelineConfig, replication: int) -> list[NewTopic]:
    p = pipeline.partitions
    return [
        NewTopic(pipeline.events_topic, p, replication),
        NewTopic(pipeline.predictions_topic, p, replication),
        NewTopic(pipeline.review_topic, p, replication),
        NewTopic(pipeline.deadletter_topic, p, replication),
        NewTopic(pipeline.shadow_topic, p, replication),
        NewTopic(pipeline.alerts_topic, 1, replication),
        NewTopic(pipeline.feedback_topic, p, replication),
        NewTopic(pipeline.log_topic, p, replication),
        # Retraining requests: a few a day, one job at a time.
        NewTopic(pipeline.retrain_topic, 1, replication),
        # One partition: a few partials a second, and one clock for every model version.
        NewTopic(pipeline.monitor_topic, 1, replication),
    ]


def ensure_topics(
    kafka_config: dict[str, Any], pipelines: list[PipelineConfig], replication: int = 1
) -> list[str]:
    """Create the pipelines' missing topics; return the names created."""
    return create_topics(
        kafka_config, [t for p in pipelines for t in pipeline_topics(p, replication)]
    )


def create_topics(kafka_config: dict[str, Any], wanted: list[NewTopic]) -> list[str]:
    """Create missing topics; return the names created. Existing topics are left as they are."""
    admin = AdminClient(kafka_config)
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [t for t in wanted if t.topic not in existing]
    created = []
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=30).items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ServiceError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    if created:
        log.info("created topics %s", ", ".join(created))
        _wait_for_leaders(admin, created)
    return created


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=5).topics
        if all(
            t in meta
            and meta[t].partitions
            and all(p.leader >= 0 for p in meta[t].partitions.values())
            for t in topics
        ):
            return
        time.sleep(0.1)
    raise ServiceError(f"topics {topics} have no leaders after {timeout:.0f}s")
