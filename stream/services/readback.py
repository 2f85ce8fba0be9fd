"""Reading topics back: what the demo and the tests use to account for every event."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from stream.errors import ServiceError

log = logging.getLogger(__name__)


def _consumer(kafka_config: dict[str, Any]) -> Consumer:
    return Consumer(
        {
            **kafka_config,
            "group.id": f"stream-readback-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )


def end_offsets(kafka_config: dict[str, Any], topic: str, timeout: float = 30.0) -> dict[int, int]:
    """The next offset of every partition of ``topic`` (where a later reader should start)."""
    consumer = _consumer(kafka_config)
    deadline = time.monotonic() + timeout
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        offsets = {}
        for p in meta.partitions:
            while True:
                try:
                    offsets[p] = consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=5
                    )[1]
                    break
                except KafkaException as exc:
                    # A partition created a moment ago may not have its leader yet.
                    if time.monotonic() > deadline:
                        raise
                    log.debug("retrying watermarks of %s[%d]: %s", topic, p, exc)
                    time.sleep(0.2)
        return offsets
    finally:
        consumer.close()


def read_topics(
    kafka_config: dict[str, Any],
    start: dict[str, dict[int, int] | None],
    done: Callable[[dict[str, list[Any]]], bool],
    timeout: float,
) -> dict[str, list[Any]]:
    """Read each topic from its start offsets (None: the beginning) until ``done`` or timeout."""
    consumer = _consumer(kafka_config)
    out: dict[str, list[Any]] = {topic: [] for topic in start}
    try:
        assignment = []
        for topic, offsets in start.items():
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            for p in partitions:
                offset = OFFSET_BEGINNING if offsets is None else offsets.get(p, OFFSET_BEGINNING)
                assignment.append(TopicPartition(topic, p, offset))
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout
        while not done(out) and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    out[str(message.topic())].append(message)
        return out
    finally:
        consumer.close()


def read_to_end(
    kafka_config: dict[str, Any], topics: list[str], timeout: float = 60.0
) -> dict[str, list[Any]]:
    """Everything committed in ``topics`` up to their end offsets at the time of the call.

    Not done within ``timeout`` seconds: ServiceError (a part is never returned
    as the whole).
    """
    out: dict[str, list[Any]] = {topic: [] for topic in topics}
    for message in iter_to_end(kafka_config, topics, timeout):
        out[str(message.topic())].append(message)
    return out


def iter_to_end(
    kafka_config: dict[str, Any], topics: list[str], timeout: float = 60.0
) -> Iterator[Any]:
    """``read_to_end`` a message at a time, none kept: for more records than memory holds.

    Done when the consumer's position reaches each end offset: with
    read_committed, aborted records and transaction markers are skipped, not
    read, so the last record read can lie before the end. Not done within
    ``timeout`` seconds: ServiceError after the messages read so far.
    """
    ends = {t: end_offsets(kafka_config, t) for t in topics}
    consumer = _consumer(kafka_config)
    try:
        assignment = [
            TopicPartition(t, p, OFFSET_BEGINNING) for t, parts in ends.items() for p in parts
        ]
        consumer.assign(assignment)
        want = {(t, p): end for t, parts in ends.items() for p, end in parts.items() if end > 0}
        deadline = time.monotonic() + timeout
        while want and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    yield message
            positions = consumer.position([TopicPartition(t, p) for t, p in want])
            for tp in positions:
                if tp.offset >= want[(tp.topic, tp.partition)]:
                    del want[(tp.topic, tp.partition)]
        if want:
            behind = ", ".join(f"{t}[{p}]" for t, p in sorted(want))
            raise ServiceError(f"could not read {behind} to the end within {timeout:.0f}s")
    finally:
        consumer.close()
