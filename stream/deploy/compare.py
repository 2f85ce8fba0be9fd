"""Model versions side by side on the same traffic, computed from ClickHouse windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.monitor.histograms import SCORE_BINS, latency_quantile

nan = float("nan")
# Midpoints of the score and confidence bins (width 0.1 on [0, 1]).
_MIDPOINTS = (np.arange(SCORE_BINS) + 0.5) / SCORE_BINS


@dataclass(frozen=True)
class VariantSummary:
    model: str
    version: str
    variant: str
    count: int
    positive_label: str
    positive_rate: float
    mean_score: float
    mean_confidence: float
    review_rate: float
    latency_p50: float
    latency_p99: float
    inference_p99: float
    cpu_seconds_per_1k: float
    labeled: int = 0  # events with a label (quality_windows); the metrics are NaN without
    accuracy: float = float("nan")
    brier: float = float("nan")


def compare_variants(client: Any, pipeline: str, minutes: float) -> list[VariantSummary]:
    rows = client.query(
        "SELECT model, model_version, argMax(variant, window_start), any(labels), "
        "sum(count), sum(reviews), "
        "sumForEach(label_counts), sumForEach(score_buckets), sumForEach(confidence_buckets), "
        "sumForEach(latency_buckets), sumForEach(inference_buckets), sum(cpu_seconds) "
        "FROM latency_windows FINAL WHERE pipeline = {p:String} "
        "AND window_end > now64(3) - toIntervalSecond({s:UInt32}) AND count > 0 "
        "GROUP BY model, model_version ORDER BY sum(count) DESC",
        parameters={"p": pipeline, "s": int(minutes * 60)},
    ).result_rows
    quality = {
        (str(m), str(v)): (int(n), float(acc), float(brier))
        for m, v, n, acc, brier in client.query(
            "SELECT model, model_version, sum(labeled), sum(accuracy * labeled) / sum(labeled), "
            "sum(brier * labeled) / sum(labeled) FROM quality_windows FINAL "
            "WHERE pipeline = {p:String} AND segment = 'all' AND labeled > 0 "
            "AND window_end > now64(3) - toIntervalSecond({s:UInt32}) "
            "GROUP BY model, model_version",
            parameters={"p": pipeline, "s": int(minutes * 60)},
        ).result_rows
    }
    out = []
    for model, version, variant, names, count, reviews, labels, scores, conf, lat, inf, cpu in rows:
        labeled, accuracy, brier = quality.get((str(model), str(version)), (0, nan, nan))
        labels_arr = np.asarray(labels, dtype=np.float64)
        scores_arr = np.asarray(scores, dtype=np.float64)
        conf_arr = np.asarray(conf, dtype=np.float64)
        out.append(
            VariantSummary(
                model=model,
                version=version,
                variant=variant,
                count=int(count),
                positive_label=names[-1] if names else "",
                positive_rate=float(labels_arr[-1] / labels_arr.sum()) if labels_arr.sum() else 0.0,
                mean_score=float(scores_arr @ _MIDPOINTS / max(scores_arr.sum(), 1)),
                mean_confidence=float(conf_arr @ _MIDPOINTS / max(conf_arr.sum(), 1)),
                review_rate=int(reviews) / int(count) if count else 0.0,
                latency_p50=latency_quantile(np.asarray(lat), 0.5),
                latency_p99=latency_quantile(np.asarray(lat), 0.99),
                inference_p99=latency_quantile(np.asarray(inf), 0.99),
                cpu_seconds_per_1k=float(cpu) / int(count) * 1000 if count else float("nan"),
                labeled=labeled,
                accuracy=accuracy,
                brier=brier,
            )
        )
    return out
