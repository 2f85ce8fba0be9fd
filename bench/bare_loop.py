"""The limit reference: a bare confluent-kafka loop, one ONNX run per consumed batch.

No validation, no review routing, no dead letters, no aggregates: what a
Python process does at best with the same decode, score and encode work.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Producer
from peers import Meter, Scoring, arguments


def main() -> None:
    args = arguments(__doc__ or "")
    scoring = Scoring(args.spec)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer(
        {"bootstrap.servers": args.bootstrap, "linger.ms": 5, "compression.type": "lz4"}
    )
    consumer.subscribe([args.topic])
    meter = Meter()
    while meter.count < args.count:
        batch = [m for m in consumer.consume(args.batch, timeout=0.1) if m.error() is None]
        if not batch:
            continue
        meter.started()
        events = [scoring.decode(m.value()) for m in batch]
        scores = scoring.predict([scoring.vector(e) for e in events])
        for message, event, score in zip(batch, events, scores, strict=True):
            while True:
                try:
                    producer.produce(
                        args.out_topic, scoring.encode(event, score), key=message.key()
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        consumer.commit(asynchronous=True)
        meter.count += len(batch)
    producer.flush(30)
    meter.report()
    consumer.close()


if __name__ == "__main__":
    main()
