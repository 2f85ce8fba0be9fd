"""Window bookkeeping of the monitor: merge partials, close windows, build rows.

Kept free of faust so the rules are unit-tested: a window closes when the
newest partial of its model version was emitted at least ``grace`` after the
window's end. A partial for a window that already closed re-opens it for one
more write with a higher revision (the tables keep the newest revision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stream.models.manifest import ModelManifest
from stream.monitor.drift import FeatureDrift
from stream.monitor.histograms import (
    BATCH_BOUNDS,
    LATENCY_BOUNDS_MS,
    WindowStats,
    latency_quantile,
)

# How many closed windows a key keeps, so late partials can still be merged.
KEEP_CLOSED = 3
# How many engines' last sequence numbers a key remembers (engines restart with new ids).
KEEP_SEEN = 64

LATENCY_COLUMNS = [
    "pipeline", "model", "model_version", "variant", "window_start", "window_end", "count",
    "reviews",
    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "inference_p50_ms", "inference_p95_ms", "inference_p99_ms",
    "bucket_bounds_ms", "latency_buckets", "inference_buckets", "labels", "label_counts",
    "score_buckets", "confidence_buckets", "revision", "written_at",
    "cpu_seconds", "cpu_seconds_per_1k", "model_runs", "batch_bounds", "batch_buckets",
]  # fmt: skip
DRIFT_COLUMNS = [
    "pipeline", "model", "model_version", "variant", "window_start", "window_end", "feature",
    "kind",
    "count", "nulls", "null_rate", "psi", "js_distance", "ks", "mean", "std", "ref_mean",
    "ref_std", "status", "bucket_counts", "revision", "written_at", "unseen", "unseen_rate",
    "wasserstein", "test", "p_value", "mean_shift", "mean_p_value",
]  # fmt: skip


@dataclass(frozen=True)
class Partial:
    pipeline: str
    model: str
    version: str
    window_start: int
    window_ms: int
    emitted_at: int
    stats: WindowStats
    variant: str = "champion"
    worker: str = ""
    seq: int = 0

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Partial:
        return cls(
            pipeline=str(data["pipeline"]),
            model=str(data["model"]),
            version=str(data["version"]),
            window_start=int(data["window_start"]),
            window_ms=int(data["window_ms"]),
            emitted_at=int(data["emitted_at"]),
            stats=WindowStats.from_dict(data["stats"]),
            variant=str(data.get("variant", "champion")),
            worker=str(data.get("worker", "")),
            seq=int(data.get("seq", 0)),
        )


@dataclass(frozen=True)
class ClosedWindow:
    pipeline: str
    model: str
    version: str
    start_ms: int
    end_ms: int
    revision: int
    stats: WindowStats
    variant: str = "champion"


def new_state() -> dict[str, Any]:
    return {"open": {}, "closed": {}, "watermark": 0, "closed_until": 0}


def merge_partial(state: dict[str, Any], partial: Partial) -> str:
    """Add a partial to its window in ``state`` (a JSON-able dict kept in a faust table).

    Returns "merged"; "duplicate" for a partial merged before (the agent may
    read a partial again after a restart, its table state already holding it);
    or "late" for one whose window closed longer ago than the closed windows
    kept for re-writing. The caller logs the last.
    """
    start = str(partial.window_start)
    seen = state.setdefault("seen", {})
    if partial.seq and seen.get(partial.worker, 0) >= partial.seq:
        return "duplicate"
    if partial.seq:
        seen.pop(partial.worker, None)
        seen[partial.worker] = partial.seq  # re-inserted: the dict stays oldest first
        for old in list(seen)[:-KEEP_SEEN]:
            del seen[old]
    state["watermark"] = max(int(state["watermark"]), partial.emitted_at)
    if partial.stats.count == 0 and start not in state["open"]:
        return "merged"  # a heartbeat: it only moves the watermark
    if start in state["closed"]:
        entry = state["closed"].pop(start)
        entry["revision"] += 1
        state["open"][start] = entry
    elif start not in state["open"]:
        if partial.window_start + partial.window_ms <= int(state["closed_until"]):
            return "late"
        state["open"][start] = {"stats": None, "window_ms": partial.window_ms, "revision": 0}
    entry = state["open"][start]
    if partial.stats.count:
        entry["variant"] = partial.variant
    if entry["stats"] is None:
        entry["stats"] = partial.stats.to_dict()
    else:
        merged = WindowStats.from_dict(entry["stats"])
        merged.merge(partial.stats)
        entry["stats"] = merged.to_dict()
    return "merged"


def _is_due(start: str, entry: dict[str, Any], watermark: int, grace_ms: int) -> bool:
    return int(start) + int(entry["window_ms"]) + grace_ms <= watermark


def count_due(state: dict[str, Any], grace_ms: int) -> int:
    """How many open windows are due, without building them (for waiting while unwritten)."""
    watermark = int(state["watermark"])
    return sum(_is_due(start, e, watermark, grace_ms) for start, e in state["open"].items())


def due_windows(
    state: dict[str, Any], key: tuple[str, str, str], grace_ms: int
) -> list[ClosedWindow]:
    """The open windows whose end plus grace lies before the watermark, oldest first."""
    pipeline, model, version = key
    watermark = int(state["watermark"])
    due = []
    for start, entry in sorted(state["open"].items(), key=lambda kv: int(kv[0])):
        if _is_due(start, entry, watermark, grace_ms):
            end = int(start) + int(entry["window_ms"])
            due.append(
                ClosedWindow(
                    pipeline, model, version, int(start), end, int(entry["revision"]),
                    WindowStats.from_dict(entry["stats"]), entry.get("variant", "champion"),
                )
            )  # fmt: skip
    return due


def mark_closed(state: dict[str, Any], window: ClosedWindow) -> None:
    start = str(window.start_ms)
    entry = state["open"].pop(start)
    state["closed"][start] = entry
    state["closed_until"] = max(int(state["closed_until"]), window.end_ms)
    for old in sorted(state["closed"], key=int)[:-KEEP_CLOSED]:
        del state["closed"][old]


def utc_from_ms(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float("nan")


def latency_row(window: ClosedWindow, manifest: ModelManifest, now: datetime) -> list[Any]:
    s = window.stats
    return [
        window.pipeline, window.model, window.version, window.variant, utc_from_ms(window.start_ms),
        utc_from_ms(window.end_ms), s.count, s.reviews,
        latency_quantile(s.latency, 0.5), latency_quantile(s.latency, 0.95),
        latency_quantile(s.latency, 0.99),
        latency_quantile(s.inference, 0.5), latency_quantile(s.inference, 0.95),
        latency_quantile(s.inference, 0.99),
        LATENCY_BOUNDS_MS.tolist(), s.latency.tolist(), s.inference.tolist(),
        list(manifest.output.labels), s.labels.tolist(), s.scores.tolist(), s.confidence.tolist(),
        window.revision, now,
        s.cpu_seconds, s.cpu_seconds / s.count * 1000.0 if s.count else float("nan"),
        int(s.batches.sum()), BATCH_BOUNDS.tolist(), s.batches.tolist(),
    ]  # fmt: skip


def drift_rows(window: ClosedWindow, drift: list[FeatureDrift], now: datetime) -> list[list[Any]]:
    rows = []
    for d in drift:
        rows.append(
            [
                window.pipeline, window.model, window.version, window.variant,
                utc_from_ms(window.start_ms), utc_from_ms(window.end_ms), d.feature, d.kind,
                d.count, d.nulls, d.null_rate, d.psi, d.js, d.ks, _finite(d.mean), _finite(d.std),
                _finite(d.ref_mean), _finite(d.ref_std), d.status, d.counts, window.revision, now,
                d.unseen, d.unseen_rate, _finite(d.wasserstein), d.test, d.p_value,
                _finite(d.mean_shift), d.mean_p_value,
            ]
        )  # fmt: skip
    return rows
