"""A peer: Quix Streams scoring each event with ``sdf.apply``, as its users write it."""

from __future__ import annotations

from peers import Meter, Scoring, arguments
from quixstreams import Application


def main() -> None:
    args = arguments(__doc__ or "")
    scoring = Scoring(args.spec)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        loglevel="WARNING",
    )
    source = app.topic(args.topic, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(args.out_topic, key_serializer="bytes", value_serializer="bytes")
    meter = Meter()

    def score(value: bytes) -> bytes:
        meter.started()
        event = scoring.decode(value)
        out = scoring.encode(event, scoring.predict([scoring.vector(event)])[0])
        meter.count += 1
        if meter.count >= args.count:
            app.stop()
        return out

    sdf = app.dataframe(source)
    sdf = sdf.apply(score)
    sdf.to_topic(sink)
    app.run()
    meter.report()


if __name__ == "__main__":
    main()
