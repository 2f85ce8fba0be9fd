"""Drift between a window's histogram and the model's reference histogram.

All measures work on bin counts, so they can be computed from merged partials
(and re-computed in SQL from the stored bucket counts).

Whether a row is flagged takes two things: an effect large enough to matter
and evidence that it is not noise. The effects: PSI at or above its warn or
alert band, backed by a two-sample test against the reference counts (KS for
numeric values, chi-square for categories); for numeric features also the
mean's shift in training standard deviations, backed by a z-test (bins of
discrete features such as counts can be too coarse for PSI to see a shift);
and a share of unseen categories at or above its band. A test counts when its
p-value is below ``alpha`` divided by the number of tests in the window
(Bonferroni): many features tested together then raise a false flag in at
most about ``alpha`` of the windows, not ``alpha`` times the number of tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import kolmogorov, ndtr
from scipy.stats import chi2_contingency

from stream.models.manifest import ModelManifest, Reference
from stream.monitor.histograms import SCORE_EDGES, WindowStats
from stream.settings import MonitorSpec

# Empty bins get this share before PSI's logarithm, as is usual for PSI.
PSI_EPSILON = 1e-4
# Drift rows of the model's output, next to its features (kind "prediction").
SCORE_ROW = "prediction.score"
CONFIDENCE_ROW = "prediction.confidence"


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


def ks_p_value(statistic: float, n_reference: int, n_current: int) -> float:
    """Asymptotic two-sample KS p-value. On binned data the statistic can only be
    smaller than on the raw values, so the p-value errs towards "no drift"."""
    if n_reference <= 0 or n_current <= 0:
        return 1.0
    effective = n_reference * n_current / (n_reference + n_current)
    return float(min(max(kolmogorov(statistic * math.sqrt(effective)), 0.0), 1.0))


def chi2_p_value(reference: np.ndarray, current: np.ndarray) -> float:
    """Chi-square test that both counts come from one distribution (a 2 x k table)."""
    table = np.vstack([reference, current]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


def wasserstein(reference: np.ndarray, current: np.ndarray, edges: Sequence[float]) -> float:
    """Earth mover's distance between two binned distributions, in the value's units.

    Integrates the gap between the cumulative distributions over the reference's
    inner bins, linear within each bin; the open-ended outer bins add nothing,
    so mass moving beyond the outermost edges counts only up to them.
    """
    bounds = np.asarray(edges, dtype=np.float64)
    if bounds.size < 2:
        return 0.0
    gap = np.abs(np.cumsum(_shares(reference)) - np.cumsum(_shares(current)))[: bounds.size]
    widths = np.diff(bounds)
    return float(np.sum((gap[:-1] + gap[1:]) / 2.0 * widths))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical | prediction
    count: int
    nulls: int
    unseen: int
    psi: float
    js: float
    ks: float
    wasserstein: float
    test: str  # ks | chi2
    p_value: float
    mean_shift: float  # (mean - ref_mean) / ref_std; NaN where there is no reference mean
    mean_p_value: float
    mean: float
    std: float
    ref_mean: float
    ref_std: float
    status: str  # ok | warn | alert | insufficient: the worse of the two levels below
    counts: list[int]
    drift_level: int = 0  # 0 ok, 1 warn, 2 alert: PSI or mean shift band, with a significant test
    drift_measure: str = "psi"  # psi | mean_shift: the one that set drift_level
    unseen_level: int = 0  # the same for the share of unseen categories

    @property
    def null_rate(self) -> float:
        total = self.count + self.nulls + self.unseen
        return self.nulls / total if total else 0.0

    @property
    def unseen_rate(self) -> float:
        total = self.count + self.nulls + self.unseen
        return self.unseen / total if total else 0.0


@dataclass(frozen=True)
class _Measured:
    """One row's measures before the window-wide test correction."""

    name: str
    kind: str
    reference: Reference
    current: np.ndarray
    nulls: int
    unseen: int
    mean: float
    std: float


def _measured_rows(manifest: ModelManifest, stats: WindowStats) -> list[_Measured]:
    rows = []
    for j, spec in enumerate(manifest.features):
        current = stats.features[j]
        observed = int(current.sum())
        mean = std = float("nan")
        if spec.type == "numeric" and observed:
            mean = float(stats.sums[j]) / observed
            std = math.sqrt(max(float(stats.sumsq[j]) / observed - mean * mean, 0.0))
        unseen = int(stats.unseen[j]) if stats.unseen.size else 0
        rows.append(
            _Measured(
                spec.name, spec.type, spec.reference, current, int(stats.nulls[j]), unseen,
                mean, std,
            )
        )  # fmt: skip
    for name, reference, current in (
        (SCORE_ROW, manifest.score_reference, stats.scores),
        (CONFIDENCE_ROW, manifest.confidence_reference, stats.confidence),
    ):
        if reference is not None and len(reference.counts) == current.size:
            nan = float("nan")
            rows.append(_Measured(name, "prediction", reference, current, 0, 0, nan, nan))
    return rows


def mean_shift(m: _Measured, n_reference: int, n_current: int) -> tuple[float, float]:
    """The mean's shift in training standard deviations, and its two-sided z-test p-value."""
    ref_mean, ref_std = m.reference.mean, m.reference.std
    if m.kind != "numeric" or ref_mean is None or not ref_std or not n_current:
        return float("nan"), 1.0
    shift = (m.mean - ref_mean) / ref_std
    # Welch's standard error with the larger of the two spreads: a few extreme
    # values in a small window raise its std too, so they do not pass for a shift.
    spread = max(m.std, ref_std) if math.isfinite(m.std) else ref_std
    error = math.sqrt(spread**2 / n_current + ref_std**2 / max(n_reference, 1))
    return shift, float(2.0 * ndtr(-abs(m.mean - ref_mean) / error))


def _band(value: float, warn: float, alert: float) -> int:
    return 2 if value >= alert else 1 if value >= warn else 0


def feature_drift(
    manifest: ModelManifest, stats: WindowStats, spec: MonitorSpec
) -> list[FeatureDrift]:
    """One FeatureDrift per feature of the model (and its score and confidence), for one window."""
    measured = _measured_rows(manifest, stats)
    tests = sum(
        1 + (m.kind == "numeric")
        for m in measured
        if int(m.current.sum()) + m.unseen >= spec.min_samples
    )
    threshold = spec.drift_alpha / max(tests, 1)
    out = []
    for m in measured:
        reference = np.asarray(m.reference.counts, dtype=np.int64)
        observed = int(m.current.sum())
        categorical = m.kind == "categorical"
        edges = SCORE_EDGES.tolist() if m.kind == "prediction" else m.reference.edges
        value_psi = psi(reference, m.current) if observed else 0.0
        ks = ks_statistic(reference, m.current) if observed else 0.0
        if categorical:
            p_value = chi2_p_value(reference, m.current) if observed else 1.0
        else:
            p_value = ks_p_value(ks, int(reference.sum()), observed)
        shift, shift_p = mean_shift(m, int(reference.sum()), observed)
        seen = observed + m.nulls + m.unseen
        unseen_rate = m.unseen / seen if seen else 0.0
        psi_level = shift_level = unseen_level = 0
        if observed + m.unseen < spec.min_samples:
            status = "insufficient"
        else:
            if p_value < threshold:
                psi_level = _band(value_psi, spec.psi_warn, spec.psi_alert)
            if shift_p < threshold:
                shift_level = _band(abs(shift), spec.mean_shift_warn, spec.mean_shift_alert)
            unseen_level = _band(unseen_rate, spec.unseen_warn, spec.unseen_alert)
            status = ("ok", "warn", "alert")[max(psi_level, shift_level, unseen_level)]
        out.append(
            FeatureDrift(
                feature=m.name,
                kind=m.kind,
                count=observed,
                nulls=m.nulls,
                unseen=m.unseen,
                psi=value_psi,
                js=js_distance(reference, m.current) if observed else 0.0,
                ks=ks,
                wasserstein=(
                    float("nan")
                    if categorical or not observed
                    else wasserstein(reference, m.current, edges)
                ),
                test="chi2" if categorical else "ks",
                p_value=p_value,
                mean_shift=shift,
                mean_p_value=shift_p,
                mean=m.mean,
                std=m.std,
                ref_mean=m.reference.mean if m.reference.mean is not None else float("nan"),
                ref_std=m.reference.std if m.reference.std is not None else float("nan"),
                status=status,
                counts=[int(c) for c in m.current],
                drift_level=max(psi_level, shift_level),
                drift_measure="psi" if psi_level >= shift_level else "mean_shift",
                unseen_level=unseen_level,
            )
        )
    return out
