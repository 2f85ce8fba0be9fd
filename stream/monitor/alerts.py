"""Alerts from closed windows: one open alert per condition until it clears.

A condition is one metric of one subject crossing its band in a window of one
model version: drift of a feature, of the model's scores or of its confidence
(PSI or mean-shift band with a significant test, see ``stream.monitor.drift``);
the share of unseen categories of a feature; the end-to-end p99 latency; the
CPU cost per 1,000 predictions; the accuracy of a segment (judged by the
quality job, ``stream.quality.job``). The first window
that shows a condition opens an alert (state ``firing``); a window with a
different severity re-states it; the first window that evaluates the subject
with enough samples and finds it within bounds resolves it (state
``resolved``). Windows with too few samples neither open nor resolve.

Open alerts are part of the monitor's table state, so they survive restarts.
Records go to ``{p}.alerts`` (JSON, keyed by alert id); a copier agent
writes that topic into ClickHouse ``alerts``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from stream.monitor.drift import CONFIDENCE_ROW, SCORE_ROW, FeatureDrift
from stream.monitor.windows import utc_from_ms
from stream.settings import MonitorSpec

SEVERITIES = ("warning", "critical")
ALERT_COLUMNS = [
    "alert_id", "state", "severity", "pipeline", "model", "model_version", "variant", "metric",
    "subject", "measure", "value", "threshold", "window_start", "window_end", "count", "message",
    "opened_at", "at",
]  # fmt: skip


@dataclass(frozen=True)
class Condition:
    metric: str  # drift | unseen_categories | latency_p99 | cost | quality
    subject: str  # the feature (or prediction.score / prediction.confidence); "" for latency
    severity: str  # warning | critical
    measure: str  # psi | mean_shift | unseen_share | p99_ms: what value and threshold are
    value: float
    threshold: float
    count: int

    @property
    def key(self) -> str:
        return f"{self.metric}:{self.subject}"


@dataclass(frozen=True)
class WindowFacts:
    """What one closed window of one model version says about every condition."""

    pipeline: str
    model: str
    version: str
    variant: str
    start_ms: int
    end_ms: int
    found: list[Condition]
    # Condition key -> (events, measure -> (value, lowest band)) for every
    # subject evaluated with enough samples.
    evaluated: dict[str, tuple[int, dict[str, tuple[float, float]]]]


def window_facts(
    pipeline: str,
    model: str,
    version: str,
    variant: str,
    start_ms: int,
    end_ms: int,
    drift: list[FeatureDrift],
    count: int,
    latency_p99_ms: float,
    spec: MonitorSpec,
    cpu_seconds: float = 0.0,
) -> WindowFacts:
    found: list[Condition] = []
    evaluated: dict[str, tuple[int, dict[str, tuple[float, float]]]] = {}
    bands = {
        "psi": (spec.psi_warn, spec.psi_alert),
        "mean_shift": (spec.mean_shift_warn, spec.mean_shift_alert),
        "unseen_share": (spec.unseen_warn, spec.unseen_alert),
    }
    for d in drift:
        if d.status == "insufficient":
            continue
        values = {"psi": d.psi}
        if math.isfinite(d.mean_shift):
            values["mean_shift"] = abs(d.mean_shift)
        evaluated[f"drift:{d.feature}"] = (
            d.count, {m: (v, bands[m][0]) for m, v in values.items()},
        )  # fmt: skip
        if d.drift_level:
            m = d.drift_measure
            found.append(
                Condition("drift", d.feature, SEVERITIES[d.drift_level - 1], m, values[m],
                          bands[m][d.drift_level - 1], d.count)
            )  # fmt: skip
        if d.kind == "categorical":
            seen = d.count + d.nulls + d.unseen
            evaluated[f"unseen_categories:{d.feature}"] = (
                seen, {"unseen_share": (d.unseen_rate, spec.unseen_warn)},
            )  # fmt: skip
            if d.unseen_level:
                found.append(
                    Condition("unseen_categories", d.feature, SEVERITIES[d.unseen_level - 1],
                              "unseen_share", d.unseen_rate,
                              bands["unseen_share"][d.unseen_level - 1], seen)
                )  # fmt: skip
    limit = spec.latency_p99_alert_ms
    if limit is not None and count >= spec.min_samples and math.isfinite(latency_p99_ms):
        evaluated["latency_p99:"] = (count, {"p99_ms": (latency_p99_ms, limit)})
        if latency_p99_ms > limit:
            found.append(
                Condition("latency_p99", "", "critical", "p99_ms", latency_p99_ms, limit, count)
            )
    limit = spec.cost_alert_cpu_seconds_per_1k
    if limit is not None and count >= spec.min_samples:
        per_1k = cpu_seconds / count * 1000.0
        evaluated["cost:"] = (count, {"cpu_s_per_1k": (per_1k, limit)})
        if per_1k > limit:
            found.append(Condition("cost", "", "warning", "cpu_s_per_1k", per_1k, limit, count))
    return WindowFacts(pipeline, model, version, variant, start_ms, end_ms, found, evaluated)


@dataclass(frozen=True)
class Alert:
    alert_id: str
    state: str  # firing | resolved
    severity: str
    pipeline: str
    model: str
    model_version: str
    variant: str
    metric: str
    subject: str
    measure: str
    value: float
    threshold: float
    window_start: int  # epoch ms
    window_end: int
    count: int
    message: str
    opened_at: int  # epoch ms: start of the window that opened the alert

    def record(self) -> dict[str, Any]:
        """The JSON record on ``{p}.alerts`` (times in epoch milliseconds)."""
        at = int(datetime.now(UTC).timestamp() * 1000)
        return {**asdict(self), "kind": self.metric, "at": at}


def alert_row(record: dict[str, Any]) -> list[Any]:
    """A record of ``{p}.alerts`` as a row of ClickHouse ``alerts``."""
    values = {c: record[c] for c in ALERT_COLUMNS}
    for name in ("window_start", "window_end", "opened_at", "at"):
        values[name] = utc_from_ms(int(values[name]))
    for name in ("value", "threshold"):
        values[name] = float(values[name])
    return [values[c] for c in ALERT_COLUMNS]


def rejection_alert(
    pipeline: str, revision: int, worker: str, models: str, reason: str, at_ms: int
) -> Alert:
    """A deployment a worker refused: a one-off ``notice``, it does not stay open."""
    return Alert(
        alert_id=f"{pipeline}|model_rejected|{revision}|{worker}",
        state="notice",
        severity="critical",
        pipeline=pipeline,
        model=models,
        model_version="",
        variant="",
        metric="model_rejected",
        subject=f"revision {revision}",
        measure="revision",
        value=float(revision),
        threshold=0.0,
        window_start=at_ms,
        window_end=at_ms,
        count=0,
        message=(
            f"Worker {worker} refused deployment revision {revision} of {pipeline} and keeps "
            f"serving the revision before it: {reason}"
        ),
        opened_at=at_ms,
    )


def track(
    open_alerts: dict[str, dict[str, Any]], facts: WindowFacts
) -> tuple[dict[str, dict[str, Any]], list[Alert]]:
    """The open alerts after ``facts``, and the records to publish for the change.

    ``open_alerts`` (condition key -> severity, value, opened_at) is not modified:
    the caller stores the result only once the records are written.
    """
    now_open = dict(open_alerts)
    records = []
    for condition in facts.found:
        before = now_open.get(condition.key)
        if before is not None and before["severity"] == condition.severity:
            continue  # still open, nothing new to say
        opened = int(before["opened_at"]) if before else facts.start_ms
        now_open[condition.key] = {
            "severity": condition.severity, "measure": condition.measure, "opened_at": opened,
        }  # fmt: skip
        records.append(
            _alert(facts, condition.metric, condition.subject, "firing", condition.severity,
                   condition.measure, condition.value, condition.threshold, condition.count,
                   opened)
        )  # fmt: skip
    still = {c.key for c in facts.found}
    for key, before in open_alerts.items():
        if key in still or key not in facts.evaluated:
            continue
        metric, _, subject = key.partition(":")
        count, measures = facts.evaluated[key]
        measure = before["measure"] if before["measure"] in measures else next(iter(measures))
        value, bound = measures[measure]
        del now_open[key]
        records.append(
            _alert(facts, metric, subject, "resolved", before["severity"], measure, value, bound,
                   count, int(before["opened_at"]))
        )  # fmt: skip
    return now_open, records


def _alert(
    facts: WindowFacts,
    metric: str,
    subject: str,
    state: str,
    severity: str,
    measure: str,
    value: float,
    threshold: float,
    count: int,
    opened_at: int,
) -> Alert:
    alert_id = "|".join(
        [facts.pipeline, facts.model, facts.version, metric, subject, str(opened_at)]
    )
    alert = Alert(
        alert_id=alert_id,
        state=state,
        severity=severity,
        pipeline=facts.pipeline,
        model=facts.model,
        model_version=facts.version,
        variant=facts.variant,
        metric=metric,
        subject=subject,
        measure=measure,
        value=value,
        threshold=threshold,
        window_start=facts.start_ms,
        window_end=facts.end_ms,
        count=count,
        message="",
        opened_at=opened_at,
    )
    return replace(alert, message=_sentence(alert))


def _subject(metric: str, subject: str) -> str:
    if metric == "latency_p99":
        return "End-to-end p99 latency"
    if metric == "cost":
        return "CPU cost"
    if metric == "quality":
        return f"Accuracy for {subject}"
    if subject == SCORE_ROW:
        return "The model's scores"
    if subject == CONFIDENCE_ROW:
        return "The model's confidence"
    return f"Feature {subject}"


def _measure(measure: str, value: float) -> str:
    if measure == "psi":
        return f"PSI {value:.2f}"
    if measure == "mean_shift":
        return f"mean shifted by {value:.2f} std"
    if measure == "unseen_share":
        return f"{value:.1%} unseen categories"
    if measure == "accuracy":
        return f"accuracy {value:.3f}"
    if measure == "cpu_s_per_1k":
        return f"{value:.3f} CPU s per 1,000 predictions"
    return f"p99 {value:,.0f} ms"


def _sentence(a: Alert) -> str:
    who = f"{a.model} v{a.model_version}"
    where = f"in the {window_label(a.window_start, a.window_end)} window; {a.count:,} events"
    if a.state == "resolved":
        return (
            f"{_subject(a.metric, a.subject)} is back within bounds "
            f"({_measure(a.measure, a.value)}) for {who} {where}. The alert had been open "
            f"since {utc_from_ms(a.opened_at):%Y-%m-%d %H:%M:%S} UTC."
        )
    strongly = " strongly" if a.severity == "critical" else ""
    if a.metric == "drift":
        bound = f"{a.threshold:.2f} std" if a.measure == "mean_shift" else f"{a.threshold:.2f}"
        what = (
            f"{_subject(a.metric, a.subject)} drifted{strongly} "
            f"({_measure(a.measure, a.value)} ≥ {bound}, significant)"
        )
    elif a.metric == "unseen_categories":
        what = (
            f"Feature {a.subject} had {a.value:.1%} values the model never saw in training "
            f"(≥ {a.threshold:.1%})"
        )
    elif a.metric == "quality":
        what = (
            f"Accuracy for {a.subject} was {a.value:.3f} (below {a.threshold:.3f}) on "
            f"{a.count:,} labeled events"
        )
        where = f"in the {window_label(a.window_start, a.window_end)} window"
    elif a.metric == "cost":
        what = f"CPU cost was {a.value:.3f} s per 1,000 predictions (above {a.threshold:.3f} s)"
    else:
        what = f"End-to-end p99 latency was {a.value:,.0f} ms (above {a.threshold:,.0f} ms)"
    return f"{what} for {who} {where}."


def window_label(start_ms: int, end_ms: int) -> str:
    """``12:00-12:01 UTC`` (seconds shown only when the window needs them), with the day."""
    start, end = utc_from_ms(start_ms), utc_from_ms(end_ms)
    fmt = "%H:%M" if start.second == 0 and end.second == 0 else "%H:%M:%S"
    return f"{start:%Y-%m-%d} {start:{fmt}}-{end:{fmt}} UTC"
