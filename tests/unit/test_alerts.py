from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from stream.monitor.alerts import (
    ALERT_COLUMNS,
    Alert,
    WindowFacts,
    alert_row,
    rejection_alert,
    track,
    window_facts,
    window_label,
)
from stream.monitor.drift import FeatureDrift
from stream.settings import MonitorSpec

SPEC = MonitorSpec(min_samples=200, latency_p99_alert_ms=250)
NOON = int(datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000


def drift_row(feature: str, psi: float, level: int, status: str = "", **extra: Any) -> FeatureDrift:
    values: dict[str, Any] = {
        "feature": feature, "kind": "numeric", "count": 2310, "nulls": 0, "unseen": 0,
        "psi": psi, "js": 0.1, "ks": 0.1, "wasserstein": 1.0, "test": "ks", "p_value": 1e-9,
        "mean_shift": 0.1, "mean_p_value": 0.5, "mean": 1.0, "std": 1.0, "ref_mean": 1.0,
        "ref_std": 1.0, "status": status or ("ok", "warn", "alert")[level], "counts": [],
        "drift_level": level, "drift_measure": "psi",
    }  # fmt: skip
    values.update(extra)
    return FeatureDrift(**values)


def facts(minute: int, *rows: FeatureDrift, p99: float = 20.0) -> WindowFacts:
    start = NOON + minute * MINUTE
    return window_facts(
        "payments", "fraud", "3", "champion", start, start + MINUTE, list(rows), 2310, p99, SPEC
    )


def test_an_alert_fires_once_changes_severity_and_resolves() -> None:
    open_alerts: dict[str, Any] = {}
    open_alerts, out = track(open_alerts, facts(0, drift_row("amount", 0.41, 2)))
    (fired,) = out
    assert (fired.state, fired.severity, fired.metric, fired.subject) == (
        "firing", "critical", "drift", "amount",
    )  # fmt: skip
    assert fired.message == (
        "Feature amount drifted strongly (PSI 0.41 ≥ 0.25, significant) for fraud v3 "
        "in the 2026-11-30 12:00-12:01 UTC window; 2,310 events."
    )
    # the same condition again: nothing new to say
    open_alerts, out = track(open_alerts, facts(1, drift_row("amount", 0.52, 2)))
    assert out == []
    # weaker: re-stated as a warning, same alert id
    open_alerts, out = track(open_alerts, facts(2, drift_row("amount", 0.12, 1)))
    (weaker,) = out
    assert (weaker.state, weaker.severity, weaker.alert_id) == ("firing", "warning", fired.alert_id)
    # too few events to tell: stays open
    thin = drift_row("amount", 0.01, 0, status="insufficient")
    open_alerts, out = track(open_alerts, facts(3, thin))
    assert out == [] and list(open_alerts) == ["drift:amount"]
    # within bounds: resolved, once
    open_alerts, out = track(open_alerts, facts(4, drift_row("amount", 0.03, 0)))
    (resolved,) = out
    assert (resolved.state, resolved.alert_id, resolved.value) == ("resolved", fired.alert_id, 0.03)
    assert resolved.threshold == SPEC.psi_warn
    assert "back within bounds (PSI 0.03)" in resolved.message
    assert "open since 2026-11-30 12:00:00 UTC" in resolved.message
    assert open_alerts == {}
    open_alerts, out = track(open_alerts, facts(5, drift_row("amount", 0.03, 0)))
    assert out == []


def test_track_leaves_the_open_alerts_it_was_given_alone() -> None:
    before: dict[str, Any] = {}
    after, _ = track(before, facts(0, drift_row("amount", 0.41, 2)))
    assert before == {} and "drift:amount" in after


def test_each_condition_is_its_own_alert() -> None:
    rows = (
        drift_row("amount", 0.41, 2),
        drift_row("ip_risk_score", 0.15, 1),
        drift_row(
            "country", 0.0, 0, kind="categorical", unseen=150, unseen_level=2, status="alert"
        ),
    )
    _, out = track({}, facts(0, *rows, p99=812.0))
    assert sorted((a.metric, a.subject, a.severity) for a in out) == [
        ("drift", "amount", "critical"),
        ("drift", "ip_risk_score", "warning"),
        ("latency_p99", "", "critical"),
        ("unseen_categories", "country", "critical"),
    ]
    latency = next(a for a in out if a.metric == "latency_p99")
    assert latency.message.startswith("End-to-end p99 latency was 812 ms (above 250 ms)")
    unseen = next(a for a in out if a.metric == "unseen_categories")
    assert unseen.message.startswith("Feature country had 6.1% values the model never saw")
    assert len({a.alert_id for a in out}) == 4


def test_a_mean_shift_alert_names_its_measure() -> None:
    row = drift_row("txn_count_1h", 0.0, 2, mean_shift=-0.62, drift_measure="mean_shift")
    _, (alert,) = track({}, facts(0, row))
    assert (alert.measure, alert.value, alert.threshold) == ("mean_shift", 0.62, 0.5)
    assert "drifted strongly (mean shifted by 0.62 std ≥ 0.50 std, significant)" in alert.message


def test_window_labels_show_seconds_only_when_needed() -> None:
    assert window_label(NOON, NOON + MINUTE) == "2026-11-30 12:00-12:01 UTC"
    assert window_label(NOON, NOON + 10_000) == "2026-11-30 12:00:00-12:00:10 UTC"


def test_records_round_trip_to_clickhouse_rows() -> None:
    _, (alert,) = track({}, facts(0, drift_row("amount", 0.41, 2)))
    record = json.loads(json.dumps(alert.record()))
    row = dict(zip(ALERT_COLUMNS, alert_row(record), strict=True))
    assert row["window_start"] == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert row["opened_at"] == row["window_start"]
    assert row["value"] == 0.41 and row["state"] == "firing"
    assert record["kind"] == "drift"


def test_a_rejected_deployment_is_a_notice() -> None:
    notice = rejection_alert("payments", 7, "host:1", "fraud:9", "checksum mismatch", NOON)
    assert isinstance(notice, Alert)
    assert (notice.state, notice.metric, notice.severity) == (
        "notice",
        "model_rejected",
        "critical",
    )
    assert "refused deployment revision 7 of payments" in notice.message
    assert len(alert_row(json.loads(json.dumps(notice.record())))) == len(ALERT_COLUMNS)


@pytest.mark.parametrize("p99", [float("nan"), 100.0])
def test_latency_under_the_bound_or_unknown_fires_nothing(p99: float) -> None:
    _, out = track({}, facts(0, p99=p99))
    assert out == []


def test_cost_above_its_bound_is_a_warning_until_it_comes_down() -> None:
    spec = SPEC.model_copy(update={"cost_alert_cpu_seconds_per_1k": 0.3})

    def window(minute: int, cpu_seconds: float) -> WindowFacts:
        start = NOON + minute * MINUTE
        return window_facts(
            "payments", "fraud", "3", "champion", start, start + MINUTE, [], 2000, 20.0, spec,
            cpu_seconds,
        )  # fmt: skip

    open_alerts, (fired,) = track({}, window(0, 0.9))  # 0.45 s per 1,000
    assert (fired.metric, fired.severity, fired.measure) == ("cost", "warning", "cpu_s_per_1k")
    assert fired.message.startswith("CPU cost was 0.450 s per 1,000 predictions (above 0.300 s)")
    _, (resolved,) = track(open_alerts, window(1, 0.2))
    assert resolved.state == "resolved" and "CPU cost is back within bounds" in resolved.message
