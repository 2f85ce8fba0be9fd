"""The drift rules on synthetic streams scored by the demo model: false alerts and detection.

Windows hold what the demo produces per window (about 900 events/s over 10 s
windows); the stream is the demo's generator, the scores the real model's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest

from stream.demo.data import FEATURES, NUMERIC, generate
from stream.models.manifest import ModelManifest
from stream.monitor.drift import FeatureDrift, feature_drift
from stream.monitor.histograms import HistogramLayout
from stream.settings import MonitorSpec

DEMO_WINDOW_EVENTS = 9_000
SPEC = MonitorSpec()  # the defaults a pipeline gets


class Windows:
    def __init__(self, trained_model: tuple[bytes, ModelManifest], seed: int) -> None:
        onnx_bytes, self.manifest = trained_model
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.fill = np.asarray([f.fill for f in self.manifest.features])
        self.layout = HistogramLayout.of(self.manifest)
        self.rng = np.random.default_rng(seed)

    def next(self, n: int, drift: dict[str, float] | None = None) -> list[FeatureDrift]:
        cols, _ = generate(n, self.rng, drift)
        raw = np.column_stack([cols[f] for f in FEATURES])
        x = np.where(np.isnan(raw), self.fill, raw).astype(np.float32)
        score = self.session.run(None, {"features": x})[-1][:, 1]
        stats = self.layout.empty()
        label = (score >= 0.5).astype(np.int64)
        confidence = np.maximum(score, 1.0 - score)
        self.layout.fold(stats, raw, np.ones(n), 0.01, label, score, confidence, 0)
        return feature_drift(self.manifest, stats, SPEC)


# At the demo's rate, and at the smallest window that is tested at all (more
# windows there: a rate below 1% needs more than 200 to be told apart).
@pytest.mark.parametrize(("events", "count"), [(DEMO_WINDOW_EVENTS, 200), (SPEC.min_samples, 1000)])
def test_no_drift_raises_almost_no_flag(
    trained_model: tuple[bytes, ModelManifest],
    figures: Callable[[str], None],
    events: int,
    count: int,
) -> None:
    windows = Windows(trained_model, seed=events)
    flagged = []
    for _ in range(count):
        rows = windows.next(events)
        flagged.append(sorted(r.feature for r in rows if r.status in ("warn", "alert")))
    rate = sum(bool(f) for f in flagged) / len(flagged)
    figures(
        f"no drift, {count:,} windows of {events:,} events, {len(rows)} rows each: "
        f"{rate:.1%} of windows flag anything (warn or alert)"
    )
    assert rate < 0.01, [f for f in flagged if f]


def test_half_a_std_mean_shift_is_flagged_within_two_windows(
    trained_model: tuple[bytes, ModelManifest], figures: Callable[[str], None]
) -> None:
    windows = Windows(trained_model, seed=99)
    missed = {}
    first = []
    for feature in NUMERIC:
        statuses = []
        for _ in range(2):
            row = next(
                r for r in windows.next(DEMO_WINDOW_EVENTS, {feature: 0.5}) if r.feature == feature
            )
            statuses.append(row.status)
        flagged = [s in ("warn", "alert") for s in statuses]
        if not any(flagged):
            missed[feature] = statuses
        else:
            first.append(flagged.index(True) + 1)
    figures(
        f"mean shift of 0.5 std, {DEMO_WINDOW_EVENTS:,} events per window: "
        f"{len(first)} of {len(NUMERIC)} numeric features flagged within 2 windows "
        f"(in window 1: {first.count(1)})"
    )
    assert not missed
