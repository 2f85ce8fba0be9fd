"""What the worker's own consumer loops share: a group member's settings, and errors."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException

log = logging.getLogger(__name__)


def group_consumer(
    kafka_config: dict[str, Any], group: str, client_id: str, **extra: Any
) -> Consumer:
    """A member of ``group`` that commits its own offsets and starts at the beginning.

    A member that dies is noticed after 10 s (the session timeout), so its
    partitions move to the others quickly.
    """
    return Consumer(
        {
            **kafka_config,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "client.id": client_id,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            **extra,
        }
    )


def usable(message: Any, who: str) -> bool:
    """Whether a consumed message is a record; a fatal error raises, others are logged."""
    err = message.error()
    if err is None:
        return True
    if err.fatal():
        raise KafkaException(err)
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("%s consumer error: %s", who, err)
    return False
