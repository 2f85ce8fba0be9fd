"""The load generator counts the events Kafka did not take."""

from __future__ import annotations

import gc
import weakref

from stream.produce import PacedProducer
from stream.serde import JsonSerde


def test_events_kafka_does_not_take_are_counted_as_failed() -> None:
    # Nothing listens on port 1: every event times out in the producer's queue.
    config = {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 1500, "log_level": 0}
    producer = PacedProducer(config, "nowhere.events", JsonSerde())
    report = producer.send([[(b"k%d" % i, b"{}") for i in range(20)]], rate=0)
    assert report.produced == 20
    assert report.failed == 20


def test_a_producer_is_freed_with_its_owner_not_at_a_later_collection() -> None:
    # A producer kept alive goes on connecting (and logging) after its broker stopped.
    config = {"bootstrap.servers": "127.0.0.1:1", "log_level": 0}
    producer = PacedProducer(config, "nowhere.events", JsonSerde())
    gone = weakref.ref(producer)
    gc.disable()
    try:
        del producer
        assert gone() is None, "a reference cycle keeps the producer until the collector runs"
    finally:
        gc.enable()
