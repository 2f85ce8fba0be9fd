from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from stream.models.manifest import ModelManifest
from stream.monitor.drift import feature_drift
from stream.monitor.histograms import HistogramLayout, WindowStats
from stream.monitor.windows import (
    DRIFT_COLUMNS,
    KEEP_CLOSED,
    LATENCY_COLUMNS,
    Partial,
    drift_rows,
    due_windows,
    latency_row,
    mark_closed,
    merge_partial,
    new_state,
)
from stream.settings import MonitorSpec

KEY = ("payments", "payments-fraud", "1")


def stats(manifest: ModelManifest, n: int) -> WindowStats:
    s = HistogramLayout.of(manifest).empty()
    s.count = n
    s.latency[10] = n
    return s


def partial(manifest: ModelManifest, start: int, emitted: int, n: int) -> Partial:
    return Partial(
        *KEY, window_start=start, window_ms=1000, emitted_at=emitted, stats=stats(manifest, n)
    )


def close_due(state: dict, grace: int) -> list[int]:
    closed = []
    for w in due_windows(state, KEY, grace):
        mark_closed(state, w)
        closed.append(w.start_ms)
    return closed


def test_window_closes_after_end_plus_grace(manifest: ModelManifest) -> None:
    state = new_state()
    assert merge_partial(state, partial(manifest, 0, 500, 10)) == "merged"
    assert merge_partial(state, partial(manifest, 0, 900, 5)) == "merged"
    assert close_due(state, grace=200) == []
    merge_partial(state, partial(manifest, 1000, 1199, 0))  # heartbeat, not yet past grace
    assert close_due(state, grace=200) == []
    merge_partial(state, partial(manifest, 1000, 1200, 0))
    (window,) = due_windows(state, KEY, 200)
    assert window.stats.count == 15
    assert window.revision == 0
    mark_closed(state, window)
    assert state["closed_until"] == 1000
    assert "1000" not in state["open"], "heartbeats open no window"


def test_late_partial_rewrites_window_with_next_revision(manifest: ModelManifest) -> None:
    state = new_state()
    merge_partial(state, partial(manifest, 0, 100, 10))
    merge_partial(state, partial(manifest, 1000, 1500, 1))
    assert close_due(state, grace=100) == [0]
    assert merge_partial(state, partial(manifest, 0, 1600, 4)) == "merged"  # another worker
    merge_partial(state, partial(manifest, 1000, 1700, 0))
    (window,) = [w for w in due_windows(state, KEY, 100) if w.start_ms == 0]
    assert window.revision == 1
    assert window.stats.count == 14


def test_too_late_partial_is_refused(manifest: ModelManifest) -> None:
    state = new_state()
    for i in range(KEEP_CLOSED + 2):
        merge_partial(state, partial(manifest, i * 1000, i * 1000 + 500, 1))
        merge_partial(state, partial(manifest, (i + 1) * 1000, (i + 1) * 1000 + 100, 0))
        close_due(state, grace=50)
    assert len(state["closed"]) == KEEP_CLOSED
    assert merge_partial(state, partial(manifest, 0, 99_000, 3)) == "late"


def test_rows_match_columns(manifest: ModelManifest) -> None:
    state = new_state()
    merge_partial(state, partial(manifest, 0, 100, 10))
    merge_partial(state, partial(manifest, 1000, 5000, 0))
    (window,) = due_windows(state, KEY, 0)
    now = datetime.now(UTC)
    row = latency_row(window, manifest, now)
    assert len(row) == len(LATENCY_COLUMNS)
    assert row[LATENCY_COLUMNS.index("count")] == 10
    assert row[LATENCY_COLUMNS.index("window_start")] == datetime.fromtimestamp(0, UTC)
    rows = drift_rows(
        window, feature_drift(manifest, window.stats, MonitorSpec(min_samples=5)), now
    )
    # every feature, then the model's score and confidence
    assert len(rows) == len(manifest.features) + 2
    assert all(len(r) == len(DRIFT_COLUMNS) for r in rows)


def test_drift_flags_only_the_shifted_feature(manifest: ModelManifest) -> None:
    from stream.demo.data import FEATURES, generate

    layout = HistogramLayout.of(manifest)
    rng = np.random.default_rng(11)
    cols, _ = generate(5000, rng, drift={"merchant_risk_score": 0.5})
    values = np.column_stack([cols[f] for f in FEATURES])
    s = layout.empty()
    layout.fold(
        s, values, np.ones(5000), 0.01, np.zeros(5000, np.int64), np.zeros(5000), np.ones(5000), 0
    )
    state = new_state()
    merge_partial(state, Partial(*KEY, 0, 1000, 100, s))
    merge_partial(state, partial(manifest, 1000, 5000, 0))
    (window,) = due_windows(state, KEY, 0)
    drift = feature_drift(manifest, window.stats, MonitorSpec(min_samples=200))
    rows = drift_rows(window, drift, datetime.now(UTC))
    # The scores folded above are constants, not the model's: only the features count here.
    status = {
        r[DRIFT_COLUMNS.index("feature")]: r[DRIFT_COLUMNS.index("status")]
        for r in rows
        if r[DRIFT_COLUMNS.index("kind")] != "prediction"
    }
    assert status.pop("merchant_risk_score") == "alert"
    assert set(status.values()) == {"ok"}


def test_a_partial_read_again_is_merged_once(manifest: ModelManifest) -> None:
    state = new_state()
    first = Partial(*KEY, 0, 1000, 100, stats(manifest, 10), worker="w1", seq=5)
    assert merge_partial(state, first) == "merged"
    assert merge_partial(state, first) == "duplicate"
    older = Partial(*KEY, 0, 1000, 90, stats(manifest, 3), worker="w1", seq=4)
    assert merge_partial(state, older) == "duplicate"
    other = Partial(*KEY, 0, 1000, 110, stats(manifest, 2), worker="w2", seq=1)
    assert merge_partial(state, other) == "merged"
    merge_partial(state, partial(manifest, 1000, 5000, 0))
    (window,) = due_windows(state, KEY, 0)
    assert window.stats.count == 12
