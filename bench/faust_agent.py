"""A peer: a faust-streaming agent scoring each event, as a typical faust user writes it."""

from __future__ import annotations

import os
import signal
import sys

import faust
from peers import Meter, Scoring, arguments


def main() -> None:
    args = arguments(__doc__ or "")
    scoring = Scoring(args.spec)
    app = faust.App(
        f"bench-faust-{args.group}",
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    sink = app.topic(args.out_topic, key_serializer="raw", value_serializer="raw")
    meter = Meter()

    @app.agent(source)
    async def score(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            meter.started()
            decoded = scoring.decode(event.value)
            value = scoring.encode(decoded, scoring.predict([scoring.vector(decoded)])[0])
            await sink.send(key=event.key, value=value)
            meter.count += 1
            if meter.count >= args.count:
                await app.producer.flush()
                meter.report()
                os.kill(os.getpid(), signal.SIGTERM)

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
