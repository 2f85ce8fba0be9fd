from __future__ import annotations

import numpy as np
import pytest

from stream.demo.data import FEATURES, generate
from stream.models.manifest import ModelManifest
from stream.monitor.histograms import (
    LATENCY_BOUNDS_MS,
    HistogramLayout,
    WindowStats,
    latency_counts,
    latency_quantile,
)


def _fold(layout: HistogramLayout, stats: WindowStats, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    cols, _ = generate(n, rng)
    values = np.column_stack([cols[f] for f in FEATURES])
    labels = rng.integers(0, 2, n)
    score = rng.random(n)
    layout.fold(
        stats,
        values,
        rng.exponential(20.0, n),
        0.01,
        labels,
        score,
        np.maximum(score, 1 - score),
        3,
    )


def test_merge_equals_folding_everything_once(trained_model: tuple[bytes, ModelManifest]) -> None:
    layout = HistogramLayout.of(trained_model[1])
    a, b, both = layout.empty(), layout.empty(), layout.empty()
    _fold(layout, a, 1, 500)
    _fold(layout, b, 2, 700)
    _fold(layout, both, 1, 500)
    _fold(layout, both, 2, 700)
    a.merge(b)
    merged, direct = a.to_dict(), both.to_dict()
    for key in ("sums", "sumsq"):
        assert merged.pop(key) == pytest.approx(direct.pop(key))
    assert merged == direct
    assert a.count == 1200
    assert a.reviews == 6
    for j, counts in enumerate(a.features):
        assert counts.sum() + a.nulls[j] == 1200


def test_round_trip_through_json_dict(trained_model: tuple[bytes, ModelManifest]) -> None:
    layout = HistogramLayout.of(trained_model[1])
    stats = layout.empty()
    _fold(layout, stats, 3, 300)
    again = WindowStats.from_dict(stats.to_dict())
    assert again.to_dict() == stats.to_dict()


def test_merge_refuses_other_layouts(trained_model: tuple[bytes, ModelManifest]) -> None:
    stats = HistogramLayout.of(trained_model[1]).empty()
    other = WindowStats.from_dict({**stats.to_dict(), "features": [[0, 0]]})
    with pytest.raises(ValueError):
        stats.merge(other)


def test_latency_quantiles_within_a_bucket_of_exact() -> None:
    values = np.random.default_rng(5).lognormal(2.0, 1.0, 50_000)
    counts = latency_counts(values)
    assert counts.sum() == values.size
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q))
        assert latency_quantile(counts, q) == pytest.approx(exact, rel=0.2)


def test_latency_buckets_are_upper_bounds() -> None:
    counts = latency_counts(np.array([0.0, LATENCY_BOUNDS_MS[3], LATENCY_BOUNDS_MS[3] + 1e-9, 1e9]))
    assert counts[0] == 1
    assert counts[3] == 1
    assert counts[4] == 1
    assert counts[-1] == 1
    assert np.isnan(latency_quantile(np.zeros_like(counts), 0.5))


def test_fold_counts_each_feature_in_its_own_bins(
    trained_model: tuple[bytes, ModelManifest],
) -> None:
    """Each feature's counts match counting its values alone: numeric ones by their
    edges, categories by index; nulls and indexes past the categories are not binned."""
    layout = HistogramLayout.of(trained_model[1])
    rng = np.random.default_rng(7)
    cols, _ = generate(400, rng)
    values = np.column_stack([cols[f] for f in FEATURES]).astype(np.float64)
    values[rng.random(values.shape) < 0.1] = np.nan
    cat = layout.categorical.index(True)
    values[:3, cat] = layout.sizes[cat]  # an index one past the known categories
    stats = layout.empty()
    ones = np.ones(len(values))
    layout.fold(stats, values, ones, 0.01, np.zeros(len(values), np.int64), ones, ones, 0)
    for j, size in enumerate(layout.sizes):
        column = values[:, j][~np.isnan(values[:, j])]
        if layout.categorical[j]:
            expected = np.bincount(column.astype(np.int64), minlength=size + 1)[:size]
        else:
            expected = np.bincount(
                np.searchsorted(layout.edges[j], column, side="right"), minlength=size
            )
        assert stats.features[j].tolist() == expected.tolist(), FEATURES[j]
        assert stats.nulls[j] == np.isnan(values[:, j]).sum()
        assert stats.sums[j] == pytest.approx(column.sum())
        assert stats.sumsq[j] == pytest.approx((column * column).sum())
