"""Where the monitor agent reads the partials topic from: the state decides, not the group.

faust commits the agent's offsets on its own schedule, apart from the table's
changelog. Around a rebalance the two can disagree: the committed offset can
pass a partial whose merge never reached the changelog (the recovered state
lacks it), and the agent would never read it again. So every state record
carries the offset of the last partial merged into it, and the agent reads
on from there:

- after an assignment, from just past the oldest recorded offset of the keys
  still in use (partials before it are in every state and are skipped);
- on a gap (an offset further on than the next expected one), it rewinds to
  the expected offset and skips everything else until it comes.

Partials read twice are merged once (``merge_partial`` remembers each engine's
last sequence number), so reading from an earlier offset never counts twice.
Kept free of faust so the rules are unit-tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PROCESS = "process"
SKIP = "skip"
REWIND = "rewind"


def resume_offset(states: Iterable[Mapping[str, Any]], idle_after_ms: int) -> int | None:
    """The first offset not merged into every state in use; None when no state records one.

    A key whose newest partial is ``idle_after_ms`` older than the newest of
    all keys (a retired model version: engines send every serving version a
    heartbeat each flush) takes no partials, so it does not hold the start back.
    """
    recorded = [
        (int(s["watermark"]), int(s["offset"])) for s in states if s.get("offset") is not None
    ]
    if not recorded:
        return None
    newest = max(watermark for watermark, _ in recorded)
    return min(offset for watermark, offset in recorded if watermark >= newest - idle_after_ms) + 1


@dataclass
class ReadPosition:
    """Decides, per partial read, to process it, skip it, or rewind to ``expected``.

    A rewind ends when the expected offset comes. Anything else read while
    rewinding is skipped: partials fetched before the seek, or read from where
    faust put the consumer (it seeks every partition to its committed offset
    when recovery ends, which can come after the agent's seek). The seek is
    repeated every ``retry_after`` seconds until it takes; after ``max_tries``
    the partials in between are taken to be gone (the caller says so).
    """

    expected: int | None = None
    rewinding: bool = False
    rewound_at: float = 0.0
    tries: int = 0
    retry_after: float = 0.5
    max_tries: int = 10
    rewinds: int = 0
    skipped: int = 0
    given_up: int = 0

    def restart(self, resume: int | None) -> None:
        """A new assignment: the recovered state ends just before ``resume``."""
        self.expected = resume
        self.rewinding = False

    def decide(self, offset: int, now: float) -> str:
        if self.rewinding:
            if self.expected is not None and offset > self.expected:
                if self.tries < self.max_tries:
                    self.skipped += 1
                    if now - self.rewound_at < self.retry_after:
                        return SKIP
                    self.rewound_at = now
                    self.tries += 1
                    return REWIND  # the seek did not take: again
                self.given_up += 1  # the partials in between are not in the topic
            self.rewinding = False
            self.expected = offset
        if self.expected is None or offset == self.expected:
            self.expected = offset + 1
            return PROCESS
        if offset < self.expected:
            self.skipped += 1
            return SKIP  # merged into the state already
        self.rewinding = True
        self.rewound_at = now
        self.tries = 1
        self.rewinds += 1
        return REWIND
