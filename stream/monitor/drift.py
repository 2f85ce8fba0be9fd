"""Drift between a window's histogram and the model's reference histogram.

All measures work on bin counts, so they can be computed from merged partials
(and re-computed in SQL from the stored bucket counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stream.models.manifest import ModelManifest
from stream.monitor.histograms import WindowStats

# Empty bins get this share before PSI's logarithm, as is usual for PSI.
PSI_EPSILON = 1e-4


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    if total <= 0:
        return np.zeros(counts.shape, dtype=np.float64)
    return counts.astype(np.float64) / float(total)


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index: sum((q - p) * ln(q / p)), empty bins smoothed."""
    p = np.clip(_shares(reference), PSI_EPSILON, None)
    q = np.clip(_shares(current), PSI_EPSILON, None)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, so in [0, 1])."""
    p = _shares(reference)
    q = _shares(current)
    m = (p + q) / 2.0

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return math.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """Largest gap between the binned cumulative distributions."""
    return float(np.max(np.abs(np.cumsum(_shares(reference)) - np.cumsum(_shares(current)))))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str
    count: int
    nulls: int
    psi: float
    js: float
    ks: float
    mean: float
    std: float
    ref_mean: float
    ref_std: float
    status: str  # ok | warn | alert | insufficient
    counts: list[int]

    @property
    def null_rate(self) -> float:
        total = self.count + self.nulls
        return self.nulls / total if total else 0.0


def feature_drift(
    manifest: ModelManifest,
    stats: WindowStats,
    min_samples: int,
    psi_warn: float,
    psi_alert: float,
) -> list[FeatureDrift]:
    """One FeatureDrift per feature of the model, for one closed window."""
    rows = []
    for j, spec in enumerate(manifest.features):
        current = stats.features[j]
        reference = np.asarray(spec.reference.counts, dtype=np.int64)
        observed = int(current.sum())
        nulls = int(stats.nulls[j])
        value_psi = psi(reference, current) if observed else 0.0
        if observed < min_samples:
            status = "insufficient"
        elif value_psi >= psi_alert:
            status = "alert"
        elif value_psi >= psi_warn:
            status = "warn"
        else:
            status = "ok"
        mean = std = float("nan")
        if spec.type == "numeric" and observed:
            mean = float(stats.sums[j]) / observed
            std = math.sqrt(max(float(stats.sumsq[j]) / observed - mean * mean, 0.0))
        rows.append(
            FeatureDrift(
                feature=spec.name,
                kind=spec.type,
                count=observed,
                nulls=nulls,
                psi=value_psi,
                js=js_distance(reference, current) if observed else 0.0,
                ks=ks_statistic(reference, current) if observed else 0.0,
                mean=mean,
                std=std,
                ref_mean=spec.reference.mean if spec.reference.mean is not None else float("nan"),
                ref_std=spec.reference.std if spec.reference.std is not None else float("nan"),
                status=status,
                counts=[int(c) for c in current],
            )
        )
    return rows
