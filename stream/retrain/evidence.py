"""What a candidate has shown on live traffic: labeled predictions from the log, latency
and cost from the monitor's windows, each judged against the pipeline's promotion limits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from stream.deploy.compare import VariantSummary, compare_variants
from stream.models.key import ModelKey
from stream.models.manifest import OutputSpec
from stream.models.runtime import Prediction
from stream.retrain.metrics import (
    aggregate,
    paired_gain,
    per_event,
    primary_metric,
    unpaired_gain,
)
from stream.settings import PipelineConfig


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Evidence:
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.checks if not c.passed]

    def summary(self) -> str:
        return "; ".join(c.detail for c in self.checks)


def shadow_evidence(
    client: Any,
    pipeline: PipelineConfig,
    candidate: ModelKey,
    champion: ModelKey,
    output: OutputSpec,
    since: datetime,
) -> Evidence:
    """The shadow against the champion on the same labeled events (a paired comparison),
    and its inference latency and cost."""
    spec = pipeline.promotion
    metric = primary_metric(pipeline.retrain.primary_metric, output)
    shadow = labeled_predictions(client, pipeline.name, candidate, True, since)
    serving = labeled_predictions(client, pipeline.name, champion, False, since)
    both = shadow.merge(serving, on="event_id", suffixes=("_c", "_k"))
    n = len(both)
    checks = [
        Check(
            "labeled",
            n >= spec.min_labeled,
            f"{n:,} labeled events scored by both (at least {spec.min_labeled:,} needed)",
        )
    ]
    if n >= 2:
        actual = both["actual_c"].to_numpy(dtype=object)
        values = {
            side: per_event(metric, output, _prediction(both, side, output), actual)
            for side in ("_c", "_k")
        }
        mean, half = paired_gain(metric, values["_c"], values["_k"])
        low = mean - half
        checks.append(
            Check(
                "quality",
                bool(low >= spec.min_improvement),
                f"{metric} {aggregate(metric, values['_c']):.4f} against the champion's "
                f"{aggregate(metric, values['_k']):.4f} on the same {n:,} events: gain "
                f"{mean:+.4f}, 95% interval {low:+.4f} to {mean + half:+.4f} (lower end "
                f"at least {spec.min_improvement:+g} needed)",
            )
        )
    minutes = spec.lookback_minutes
    checks += serving_costs(client, pipeline, candidate, champion, minutes)
    return Evidence(checks)


def step_evidence(
    client: Any,
    pipeline: PipelineConfig,
    candidate: ModelKey,
    champion: ModelKey,
    output: OutputSpec,
    since: datetime,
    seconds: float,
) -> Evidence:
    """The candidate's share of traffic since a step began against the champion's share:
    it took traffic, latency and cost within the limits, and (once both have
    ``min_labeled`` labels) a quality gain whose 95% interval reaches
    ``min_improvement``: a step fails on quality only when the candidate is
    significantly short of it."""
    spec = pipeline.promotion
    checks = serving_costs(client, pipeline, candidate, champion, max(seconds, 60) / 60)
    metric = primary_metric(pipeline.retrain.primary_metric, output)
    mine = labeled_predictions(client, pipeline.name, candidate, False, since)
    theirs = labeled_predictions(client, pipeline.name, champion, False, since)
    if min(len(mine), len(theirs)) < spec.min_labeled:
        checks.append(
            Check(
                "quality",
                True,
                f"quality not judged yet: {len(mine):,} and {len(theirs):,} labeled events "
                f"(at least {spec.min_labeled:,} each needed)",
            )
        )
        return Evidence(checks)
    a = per_event(metric, output, _prediction(mine, "", output), mine["actual"].to_numpy(object))
    b = per_event(
        metric, output, _prediction(theirs, "", output), theirs["actual"].to_numpy(object)
    )
    mean, half = unpaired_gain(metric, a, b)
    checks.append(
        Check(
            "quality",
            bool(mean + half >= spec.min_improvement),
            f"{metric} {aggregate(metric, a):.4f} on {len(a):,} events against the champion's "
            f"{aggregate(metric, b):.4f} on {len(b):,}: gain {mean:+.4f} ± {half:.4f}",
        )
    )
    return Evidence(checks)


def serving_costs(
    client: Any, pipeline: PipelineConfig, candidate: ModelKey, champion: ModelKey, minutes: float
) -> list[Check]:
    spec = pipeline.promotion
    rows = {(r.model, r.version): r for r in compare_variants(client, pipeline.name, minutes)}
    mine = rows.get((candidate.name, candidate.version))
    theirs = rows.get((champion.name, champion.version))
    if mine is None or theirs is None:
        missing = candidate if mine is None else champion
        return [Check("traffic", False, f"no monitor windows of {missing} in {minutes:g} minutes")]
    return [
        Check("traffic", mine.count > 0, f"{mine.count:,} events scored by {candidate}"),
        _ratio(
            "latency", "inference p99 (ms)", mine, theirs, "inference_p99", spec.max_latency_ratio
        ),
        _ratio("cost", "CPU s per 1,000", mine, theirs, "cpu_seconds_per_1k", spec.max_cost_ratio),
    ]


def _ratio(
    name: str, label: str, mine: VariantSummary, theirs: VariantSummary, field: str, limit: float
) -> Check:
    a, b = float(getattr(mine, field)), float(getattr(theirs, field))
    ratio = a / b if b > 0 else (1.0 if a == b else math.inf)
    return Check(
        name,
        bool(ratio <= limit),
        f"{label} {a:.4g} against the champion's {b:.4g}: {ratio:.2f}x (at most {limit:g}x)",
    )


def labeled_predictions(
    client: Any, pipeline: str, key: ModelKey, shadow: bool, since: datetime
) -> pd.DataFrame:
    """event_id, predicted, score, actual of one version's logged predictions (its shadow
    ones, or those it served) that have a label."""
    rows = client.query(
        """
        SELECT p.event_id, p.label, p.score, f.label
        FROM prediction_log AS p FINAL
        INNER JOIN
        (
            SELECT event_id, label FROM feedback FINAL WHERE pipeline = {pipeline:String}
        ) AS f ON p.event_id = f.event_id
        WHERE p.pipeline = {pipeline:String} AND p.model = {model:String}
          AND p.model_version = {version:String} AND (p.variant = 'shadow') = {shadow:Bool}
          AND p.scored_time >= {since:DateTime64(3, 'UTC')}
        """,
        parameters={
            "pipeline": pipeline,
            "model": key.name,
            "version": key.version,
            "shadow": shadow,
            "since": since,
        },
    ).result_rows
    return pd.DataFrame(rows, columns=["event_id", "predicted", "score", "actual"])


def _prediction(frame: pd.DataFrame, suffix: str, output: OutputSpec) -> Prediction:
    """Logged predictions as the metrics take them."""
    score = frame[f"score{suffix}"].to_numpy(dtype=np.float64)
    n = len(score)
    if output.kind == "regressor":
        index = np.full(n, -1, dtype=np.int64)
    else:
        lookup = {label: i for i, label in enumerate(output.labels)}
        index = frame[f"predicted{suffix}"].map(lookup).fillna(-1).to_numpy(dtype=np.int64)
    return Prediction(index, score, np.ones(n), np.empty((n, 0)))
