from __future__ import annotations

import math

import numpy as np
import pytest

from stream.models.manifest import ModelManifest
from stream.monitor.drift import (
    PSI_EPSILON,
    FeatureDrift,
    chi2_p_value,
    feature_drift,
    js_distance,
    ks_p_value,
    ks_statistic,
    psi,
    wasserstein,
)
from stream.monitor.histograms import HistogramLayout, WindowStats
from stream.settings import MonitorSpec


def test_psi_hand_computed() -> None:
    ref = np.array([50, 30, 20])
    cur = np.array([30, 30, 40])
    # (0.3-0.5)ln(0.3/0.5) + 0 + (0.4-0.2)ln(0.4/0.2)
    expected = (-0.2) * math.log(0.6) + 0.2 * math.log(2.0)
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-12)


def test_psi_identical_is_zero_and_scale_free() -> None:
    ref = np.array([10, 20, 30, 40])
    assert psi(ref, ref * 7) == pytest.approx(0.0, abs=1e-15)


def test_psi_smooths_empty_bins() -> None:
    ref = np.array([100, 0])
    cur = np.array([50, 50])
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - PSI_EPSILON) * math.log(0.5 / PSI_EPSILON)
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-9)


def test_js_distance_bounds_and_value() -> None:
    assert js_distance(np.array([1, 1]), np.array([5, 5])) == pytest.approx(0.0, abs=1e-12)
    assert js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    # p = (1/2, 1/2), q = (1, 0): JS divergence = 1.5 - 0.75*log2(3) bits... computed by hand:
    p = np.array([0.5, 0.5])
    q = np.array([1.0, 0.0])
    m = (p + q) / 2
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = 1.0 * math.log2(1.0 / 0.75)
    assert js_distance(p * 10, q * 10) == pytest.approx(math.sqrt((kl_p + kl_q) / 2))
    assert m.sum() == pytest.approx(1.0)


def test_ks_from_binned_cdfs() -> None:
    ref = np.array([25, 25, 25, 25])  # cdf .25 .5 .75 1
    cur = np.array([10, 10, 40, 40])  # cdf .1 .2 .6 1
    assert ks_statistic(ref, cur) == pytest.approx(0.3)
    assert ks_statistic(ref, ref) == pytest.approx(0.0)


def test_wasserstein_on_bins_by_hand() -> None:
    edges = [0.0, 1.0, 3.0]  # inner bins [0, 1] and [1, 3]
    ref = np.array([0, 50, 50, 0])  # cdf at the edges: 0, .5, 1
    cur = np.array([0, 0, 50, 50])  # cdf at the edges: 0, 0, .5
    # trapezoids of the cdf gap: (0 + .5) / 2 * 1 + (.5 + .5) / 2 * 2
    assert wasserstein(ref, cur, edges) == pytest.approx(0.25 + 1.0)
    assert wasserstein(ref, ref * 3, edges) == pytest.approx(0.0)


def test_binned_ks_p_value_errs_towards_no_drift() -> None:
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(3)
    reference, current = rng.normal(0, 1, 4000), rng.normal(0.08, 1, 2000)
    edges = np.quantile(reference, np.linspace(0, 1, 11)[1:-1])
    ref_counts = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=10)
    cur_counts = np.bincount(np.searchsorted(edges, current, side="right"), minlength=10)
    binned = ks_p_value(ks_statistic(ref_counts, cur_counts), 4000, 2000)
    raw = ks_2samp(reference, current, method="asymp").pvalue
    assert raw <= binned <= 1.0
    assert ks_p_value(0.0, 100, 100) == pytest.approx(1.0)


def test_chi2_p_value_matches_a_hand_computed_table() -> None:
    from scipy.stats import chi2

    ref, cur = np.array([60, 40]), np.array([40, 60])
    # expected 50 everywhere: 4 * 10^2 / 50 = 8 with one degree of freedom
    assert chi2_p_value(ref, cur) == pytest.approx(chi2.sf(8.0, 1))
    assert chi2_p_value(ref, np.array([0, 0])) == 1.0
    assert chi2_p_value(np.array([5, 0]), np.array([7, 0])) == 1.0  # one category seen


SPEC = MonitorSpec(min_samples=200)


def _stats(manifest: ModelManifest, seed: int, n: int, **drift: float) -> WindowStats:
    from stream.demo.data import FEATURES, generate

    layout = HistogramLayout.of(manifest)
    cols, _ = generate(n, np.random.default_rng(seed), drift)
    values = np.column_stack([cols[f] for f in FEATURES])
    stats = layout.empty()
    ones = np.ones(n)
    layout.fold(stats, values, ones, 0.01, np.zeros(n, np.int64), ones * 0.1, ones * 0.9, 0)
    return stats


def _by_feature(rows: list[FeatureDrift]) -> dict[str, FeatureDrift]:
    return {r.feature: r for r in rows}


def test_a_count_feature_shift_is_seen_by_its_mean_when_bins_are_too_coarse(
    manifest: ModelManifest,
) -> None:
    # Counts of 0 and 0.35 share a bin: PSI sees nothing, the mean shift does.
    rows = _by_feature(feature_drift(manifest, _stats(manifest, 5, 5000, txn_count_1h=0.5), SPEC))
    row = rows["txn_count_1h"]
    assert row.psi < 0.01
    assert row.mean_shift == pytest.approx(0.5, abs=0.1)
    assert row.drift_level >= 1 and row.drift_measure == "mean_shift"
    assert row.mean_p_value < 1e-6


def test_unseen_categories_flag_a_feature_by_their_share(manifest: ModelManifest) -> None:
    stats = _stats(manifest, 6, 2000)
    country = manifest.feature_names.index("country")
    stats.unseen[country] = 150  # 150 of 2,150 values: 7.0%
    row = _by_feature(feature_drift(manifest, stats, SPEC))["country"]
    assert row.unseen_rate == pytest.approx(150 / 2150)
    assert row.unseen_level == 2 and row.status == "alert"
    stats.unseen[country] = 30  # 1.5%: warn
    assert _by_feature(feature_drift(manifest, stats, SPEC))["country"].status == "warn"


def test_the_model_output_gets_drift_rows_of_its_own(manifest: ModelManifest) -> None:
    rows = _by_feature(feature_drift(manifest, _stats(manifest, 7, 1000), SPEC))
    score, confidence = rows["prediction.score"], rows["prediction.confidence"]
    assert score.kind == confidence.kind == "prediction"
    # every score was 0.1 and every confidence 0.9 above: nothing like the reference
    assert score.status == confidence.status == "alert"
    assert score.counts[1] == 1000 and confidence.counts[9] == 1000


def test_a_band_flags_only_with_a_significant_test(manifest: ModelManifest) -> None:
    # A PSI band crossed without a significant test is not flagged: with 200
    # events per window a PSI of 0.1 is often just noise.
    stats = _stats(manifest, 8, 200)
    loose = MonitorSpec(min_samples=200, psi_warn=0.01, psi_alert=0.02, drift_alpha=0.5)
    strict = loose.model_copy(update={"drift_alpha": 1e-12})
    flagged = [r.feature for r in feature_drift(manifest, stats, loose) if r.drift_level]
    assert flagged, "with alpha 0.5 some noise passes the bands"
    assert not [
        r
        for r in feature_drift(manifest, stats, strict)
        if r.kind != "prediction" and r.drift_level
    ]
