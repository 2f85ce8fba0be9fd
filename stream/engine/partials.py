"""Per-window partial aggregates of one engine, published about once a second."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from stream.models.manifest import ModelManifest
from stream.monitor.histograms import HistogramLayout, WindowStats


def window_start(now_ms: int, window_ms: int) -> int:
    return now_ms - now_ms % window_ms


def monitor_key(pipeline: str, model: str, version: str) -> str:
    return f"{pipeline}|{model}|{version}"


@dataclass
class PartialAccumulator:
    """Open windows of one model version in one engine since the last flush."""

    pipeline: str
    manifest: ModelManifest
    window_ms: int
    worker: str
    variant: str = "champion"
    layout: HistogramLayout = field(init=False)
    windows: dict[int, WindowStats] = field(default_factory=dict)
    seq: int = 0

    def __post_init__(self) -> None:
        self.layout = HistogramLayout.of(self.manifest)

    def window(self, now_ms: int) -> WindowStats:
        start = window_start(now_ms, self.window_ms)
        stats = self.windows.get(start)
        if stats is None:
            stats = self.windows[start] = self.layout.empty()
        return stats

    @property
    def key(self) -> bytes:
        return monitor_key(self.pipeline, self.manifest.name, self.manifest.version).encode()

    def drain(self, now_ms: int) -> list[bytes]:
        """Encode and forget every open window.

        With no traffic since the last flush it still emits an empty partial
        for the current window: the monitor agent's clock advances on partials,
        so windows close on time when the stream goes quiet.
        """
        if not self.windows:
            self.window(now_ms)
        out = []
        for start, stats in sorted(self.windows.items()):
            # Increasing within the process, also for an accumulator created anew.
            self.seq = max(self.seq + 1, time.monotonic_ns())
            envelope = self._envelope(start, stats, now_ms)
            out.append(json.dumps(envelope, separators=(",", ":")).encode())
        self.windows = {}
        return out

    def _envelope(self, start: int, stats: WindowStats, now_ms: int) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "model": self.manifest.name,
            "version": self.manifest.version,
            "variant": self.variant,
            "window_start": start,
            "window_ms": self.window_ms,
            "emitted_at": now_ms,
            "worker": self.worker,
            # (worker, seq) identifies a partial: the monitor merges each one once.
            "seq": self.seq,
            "stats": stats.to_dict(),
        }
