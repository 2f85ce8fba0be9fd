"""Fixed-bucket histograms that merge by addition.

The scoring engine folds every batch into a ``WindowStats`` per model version
and window; the monitor agent adds the partials of all workers together. Bucket
layouts are fixed (latency) or come from the model's reference bins (features,
score), so two partials of the same model version always line up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.models.manifest import ModelManifest, Reference

# Latency bucket upper bounds in milliseconds: 0.01 ms to ~140 s, four buckets
# per doubling (each about 19% wide). One more bucket holds everything above.
LATENCY_BOUNDS_MS = 0.01 * 2.0 ** (np.arange(96) / 4.0)
LATENCY_BUCKETS = LATENCY_BOUNDS_MS.size + 1
# Score and confidence bins: ten of width 0.1 on [0, 1].
SCORE_EDGES = np.linspace(0.1, 0.9, 9)
SCORE_BINS = SCORE_EDGES.size + 1
# Batch size bucket upper bounds: 1, 2, 4 ... 16,384; one more bucket above.
BATCH_BOUNDS = 2 ** np.arange(15)
BATCH_BUCKETS = BATCH_BOUNDS.size + 1


def batch_bucket(size: int) -> int:
    return int(np.searchsorted(BATCH_BOUNDS, size, side="left"))


def score_reference(values: np.ndarray) -> Reference:
    """A model's reference histogram of scores or confidences, on the monitor's bins."""
    clipped = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    counts = np.bincount(np.searchsorted(SCORE_EDGES, clipped, side="right"), minlength=SCORE_BINS)
    return Reference(counts=[int(c) for c in counts])


def latency_counts(values_ms: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(LATENCY_BOUNDS_MS, values_ms, side="left")
    return np.bincount(idx, minlength=LATENCY_BUCKETS).astype(np.int64)


def latency_quantile(counts: np.ndarray, q: float) -> float:
    """The q-quantile of a latency histogram, interpolated inside its bucket."""
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    rank = q * total
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, rank, side="left"))
    i = min(i, LATENCY_BUCKETS - 1)
    lower = 0.0 if i == 0 else float(LATENCY_BOUNDS_MS[i - 1])
    upper = float(LATENCY_BOUNDS_MS[min(i, LATENCY_BOUNDS_MS.size - 1)])
    before = 0 if i == 0 else int(cum[i - 1])
    inside = int(counts[i])
    frac = (rank - before) / inside if inside else 1.0
    return lower + (upper - lower) * min(max(frac, 0.0), 1.0)


@dataclass(frozen=True)
class HistogramLayout:
    """Bucket layout of one model version: where each feature's values fall."""

    feature_names: list[str]
    categorical: list[bool]
    edges: list[np.ndarray]  # inner edges (numeric) or empty (categorical)
    sizes: list[int]  # number of bins per feature
    n_labels: int
    # Every feature's bins end to end, feature j's from _starts[j]: a batch is
    # counted by one bincount, not one per feature.
    _starts: np.ndarray = field(init=False, repr=False, compare=False)
    _sizes: np.ndarray = field(init=False, repr=False, compare=False)
    _parts: list[slice] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = np.asarray(self.sizes, dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_sizes", sizes)
        parts = [slice(a, a + n) for a, n in zip(starts.tolist(), self.sizes, strict=True)]
        object.__setattr__(self, "_parts", parts)

    @classmethod
    def of(cls, manifest: ModelManifest) -> HistogramLayout:
        edges = [np.asarray(f.reference.edges, dtype=np.float64) for f in manifest.features]
        return cls(
            feature_names=manifest.feature_names,
            categorical=[f.type == "categorical" for f in manifest.features],
            edges=edges,
            sizes=[len(f.reference.counts) for f in manifest.features],
            n_labels=max(len(manifest.output.labels), 1),
        )

    def empty(self) -> WindowStats:
        n = len(self.feature_names)
        return WindowStats(
            count=0,
            latency=np.zeros(LATENCY_BUCKETS, np.int64),
            inference=np.zeros(LATENCY_BUCKETS, np.int64),
            features=[np.zeros(size, np.int64) for size in self.sizes],
            nulls=np.zeros(n, np.int64),
            unseen=np.zeros(n, np.int64),
            sums=np.zeros(n, np.float64),
            sumsq=np.zeros(n, np.float64),
            labels=np.zeros(self.n_labels, np.int64),
            scores=np.zeros(SCORE_BINS, np.int64),
            confidence=np.zeros(SCORE_BINS, np.int64),
            batches=np.zeros(BATCH_BUCKETS, np.int64),
        )

    def fold(
        self,
        stats: WindowStats,
        values: np.ndarray,
        latency_ms: np.ndarray,
        inference_ms: float,
        label_index: np.ndarray,
        score: np.ndarray,
        confidence: np.ndarray,
        reviews: int,
    ) -> None:
        """Add a scored batch. ``values`` holds raw features, NaN where the input was null."""
        n = values.shape[0]
        stats.count += n
        stats.reviews += reviews
        stats.latency += latency_counts(latency_ms)
        stats.latency_sum_ms += float(latency_ms.sum())
        stats.inference_sum_ms += inference_ms * n
        stats.inference[np.searchsorted(LATENCY_BOUNDS_MS, inference_ms, side="left")] += n
        stats.batches[batch_bucket(n)] += 1
        columns = np.ascontiguousarray(values.T)  # a feature a row, its values side by side
        missing = np.isnan(columns)
        stats.nulls += np.count_nonzero(missing, axis=1)
        filled = np.where(missing, 0.0, columns)
        stats.sums += filled.sum(axis=1)
        stats.sumsq += np.einsum("ij,ij->i", filled, filled)
        counts = self._feature_counts(columns, missing)
        for j, part in enumerate(self._parts):
            stats.features[j] += counts[part]
        labels = label_index[label_index >= 0]
        stats.labels += np.bincount(labels, minlength=self.n_labels)[: self.n_labels]
        clipped = np.clip(score, 0.0, 1.0)
        stats.scores += np.bincount(
            np.searchsorted(SCORE_EDGES, clipped, side="right"), minlength=SCORE_BINS
        )
        stats.confidence += np.bincount(
            np.searchsorted(SCORE_EDGES, confidence, side="right"), minlength=SCORE_BINS
        )

    def _feature_counts(self, columns: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """The bin counts of every feature (a row of ``columns`` each), end to end;
        nulls and values outside a feature's bins (an index past its categories)
        are not counted."""
        bins = np.empty(columns.shape, dtype=np.int64)
        for j, column in enumerate(columns):
            if self.categorical[j]:
                bins[j] = np.where(missing[j], -1.0, column)  # the index, as float
            else:
                bins[j] = np.searchsorted(self.edges[j], column, side="right")
        counted = (bins >= 0) & (bins < self._sizes[:, None]) & ~missing
        return np.bincount((bins + self._starts[:, None])[counted], minlength=self._parts[-1].stop)


@dataclass
class WindowStats:
    """Counts of one model version over one window; ``merge`` is plain addition."""

    count: int
    latency: np.ndarray
    inference: np.ndarray
    features: list[np.ndarray]
    nulls: np.ndarray
    unseen: np.ndarray  # per feature: values dead-lettered as unknown categories
    sums: np.ndarray
    sumsq: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    confidence: np.ndarray
    batches: np.ndarray  # batch size histogram on BATCH_BOUNDS: one count per model run
    reviews: int = 0
    cpu_seconds: float = 0.0  # process CPU time attributed to this version's events
    latency_sum_ms: float = 0.0
    inference_sum_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: WindowStats) -> None:
        if len(other.features) != len(self.features):
            raise ValueError("cannot merge statistics of different feature layouts")
        self.count += other.count
        self.reviews += other.reviews
        self.latency += other.latency
        self.inference += other.inference
        for mine, theirs in zip(self.features, other.features, strict=True):
            mine += theirs
        self.nulls += other.nulls
        self.unseen += other.unseen
        self.sums += other.sums
        self.sumsq += other.sumsq
        self.labels += other.labels
        self.scores += other.scores
        self.confidence += other.confidence
        self.batches += other.batches
        self.cpu_seconds += other.cpu_seconds
        self.latency_sum_ms += other.latency_sum_ms
        self.inference_sum_ms += other.inference_sum_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "reviews": self.reviews,
            "latency": self.latency.tolist(),
            "inference": self.inference.tolist(),
            "features": [f.tolist() for f in self.features],
            "nulls": self.nulls.tolist(),
            "unseen": self.unseen.tolist(),
            "sums": self.sums.tolist(),
            "sumsq": self.sumsq.tolist(),
            "labels": self.labels.tolist(),
            "scores": self.scores.tolist(),
            "confidence": self.confidence.tolist(),
            "batches": self.batches.tolist(),
            "cpu_seconds": self.cpu_seconds,
            "latency_sum_ms": self.latency_sum_ms,
            "inference_sum_ms": self.inference_sum_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowStats:
        def ints(key: str) -> np.ndarray:
            return np.asarray(data[key], dtype=np.int64)

        return cls(
            count=int(data["count"]),
            reviews=int(data.get("reviews", 0)),
            latency=ints("latency"),
            inference=ints("inference"),
            features=[np.asarray(f, dtype=np.int64) for f in data["features"]],
            nulls=ints("nulls"),
            # State written before unseen categories were counted has none.
            unseen=ints("unseen") if "unseen" in data else np.zeros(len(data["nulls"]), np.int64),
            sums=np.asarray(data["sums"], dtype=np.float64),
            sumsq=np.asarray(data["sumsq"], dtype=np.float64),
            labels=ints("labels"),
            scores=ints("scores"),
            confidence=ints("confidence"),
            # Partials and state written before cost was kept have none.
            batches=ints("batches") if "batches" in data else np.zeros(BATCH_BUCKETS, np.int64),
            cpu_seconds=float(data.get("cpu_seconds", 0.0)),
            latency_sum_ms=float(data.get("latency_sum_ms", 0.0)),
            inference_sum_ms=float(data.get("inference_sum_ms", 0.0)),
        )
