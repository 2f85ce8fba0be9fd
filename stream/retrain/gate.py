"""The gate before any traffic: a candidate against the champion on held-out recent events.

The candidate must beat or match the champion on the pipeline's primary
metric by ``retrain.min_improvement``, and be no worse than
``retrain.max_segment_regression`` on any segment with
``retrain.min_segment_labels`` labels (the fairness guard). Every metric is
recorded per segment; only those two rules decide.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from stream.models.manifest import Validation
from stream.models.runtime import OnnxModel
from stream.retrain.dataset import LabeledEvents, segment_column
from stream.retrain.metrics import aggregate, gain, metrics_for, per_event, primary_metric
from stream.retrain.trainer import LABEL
from stream.settings import RetrainSpec

OVERALL = ("all", "")


@dataclass(frozen=True)
class GateRow:
    metric: str
    segment: str
    segment_value: str
    labeled: int
    candidate: float
    champion: float
    gain: float
    rule: str  # the rule this row was judged by; empty when it only informs
    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class GateResult:
    metric: str
    rows: list[GateRow]
    holdout_rows: int

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def reasons(self) -> list[str]:
        return [r.reason for r in self.rows if not r.passed]

    @property
    def overall(self) -> GateRow:
        return next(r for r in self.rows if r.metric == self.metric and r.segment == "all")

    def verdict(self, champion: str) -> Validation:
        top = self.overall
        return Validation(
            status="passed" if self.passed else "rejected",
            champion=champion,
            metric=self.metric,
            candidate_value=top.candidate,
            champion_value=top.champion,
            holdout_rows=self.holdout_rows,
            reasons=self.reasons,
            validated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )


def judge(
    candidate: OnnxModel, champion: OnnxModel, holdout: LabeledEvents, spec: RetrainSpec
) -> GateResult:
    output = champion.manifest.output
    metric = primary_metric(spec.primary_metric, output)
    actual = holdout.frame[LABEL].to_numpy(dtype=object)
    scored = {
        "candidate": candidate.predict(holdout.model_input(candidate.manifest)),
        "champion": champion.predict(holdout.model_input(champion.manifest)),
    }
    rows = []
    for name in metrics_for(output):
        values = {k: per_event(name, output, p, actual) for k, p in scored.items()}
        for segment, value, mask in _segments(holdout):
            cand = aggregate(name, values["candidate"][mask])
            champ = aggregate(name, values["champion"][mask])
            rows.append(_judged(name, metric, segment, value, int(mask.sum()), cand, champ, spec))
    return GateResult(metric, rows, len(holdout))


def _segments(holdout: LabeledEvents) -> Iterator[tuple[str, str, np.ndarray]]:
    frame = holdout.frame
    yield *OVERALL, np.ones(len(frame), dtype=bool)
    for segment in holdout.segments:
        column = frame[segment_column(segment)].astype(str)
        for value in sorted(column.unique()):
            yield segment, value, (column == value).to_numpy()


def _judged(
    name: str,
    primary: str,
    segment: str,
    value: str,
    labeled: int,
    cand: float,
    champ: float,
    spec: RetrainSpec,
) -> GateRow:
    delta = gain(name, cand, champ)
    row: dict[str, Any] = {
        "metric": name, "segment": segment, "segment_value": value, "labeled": labeled,
        "candidate": cand, "champion": champ, "gain": delta, "rule": "", "passed": True,
    }  # fmt: skip
    if name != primary:
        return GateRow(**row)
    if (segment, value) == OVERALL:
        row["rule"] = f"gain >= {spec.min_improvement:g}"
        row["passed"] = bool(delta >= spec.min_improvement)
        row["reason"] = (
            f"{name} {cand:.4f} against the champion's {champ:.4f} on {labeled:,} held-out "
            f"events: gain {delta:+.4f}, needs at least {spec.min_improvement:+g}"
        )
    elif labeled >= spec.min_segment_labels:
        row["rule"] = f"gain >= -{spec.max_segment_regression:g}"
        row["passed"] = bool(delta >= -spec.max_segment_regression)
        row["reason"] = (
            f"segment {segment}={value}: {name} {cand:.4f} against the champion's {champ:.4f} "
            f"on {labeled:,} events, worse by {-delta:.4f} (at most "
            f"{spec.max_segment_regression:g} allowed)"
        )
    if row["passed"]:
        row["reason"] = ""
    return GateRow(**row)
