"""Per-event quality metrics, so that one set of numbers serves the gate and the shadow's
paired comparison with the champion."""

from __future__ import annotations

import math

import numpy as np

from stream.models.manifest import OutputSpec
from stream.models.runtime import Prediction

# +1: higher is better; -1: lower is better.
DIRECTION = {"accuracy": 1, "brier": -1, "log_loss": -1, "mae": -1, "rmse": -1}
Z95 = 1.959963984540054


def metrics_for(output: OutputSpec) -> list[str]:
    """The metrics that make sense for a model's output."""
    if output.kind == "regressor":
        return ["rmse", "mae"]
    if output.positive_index is not None:
        return ["accuracy", "brier", "log_loss"]
    return ["accuracy"]


def primary_metric(chosen: str | None, output: OutputSpec) -> str:
    available = metrics_for(output)
    if chosen is None:
        return available[0]
    if chosen not in available:
        raise ValueError(f"{chosen} does not apply to a {output.kind} (use one of {available})")
    return chosen


def per_event(
    metric: str, output: OutputSpec, prediction: Prediction, actual: np.ndarray
) -> np.ndarray:
    """One value per event whose mean is the metric (for rmse: the squared error)."""
    if metric == "accuracy":
        predicted = np.asarray(output.labels, dtype=object)[prediction.label_index]
        return (predicted == actual).astype(np.float64)
    if metric in ("brier", "log_loss"):
        outcome = (actual == output.labels[output.positive_index or 0]).astype(np.float64)
        p = prediction.score
        if metric == "brier":
            return np.asarray((p - outcome) ** 2, dtype=np.float64)
        p = np.clip(p, 1e-15, 1 - 1e-15)
        return np.asarray(-(outcome * np.log(p) + (1 - outcome) * np.log(1 - p)))
    value = np.array([_number(a) for a in actual])
    error = prediction.score - value
    return np.abs(error) if metric == "mae" else error**2


def aggregate(metric: str, values: np.ndarray) -> float:
    if values.size == 0:
        return math.nan
    mean = float(np.nanmean(values))
    return math.sqrt(mean) if metric == "rmse" else mean


def gain(metric: str, candidate: float, champion: float) -> float:
    """How much better the candidate is, in the metric's units (negative: worse)."""
    return DIRECTION[metric] * (candidate - champion)


def paired_gain(metric: str, candidate: np.ndarray, champion: np.ndarray) -> tuple[float, float]:
    """Mean per-event gain on the same events and the half-width of its 95% interval
    (normal approximation; for rmse, of the mean squared error)."""
    diff = DIRECTION[metric] * (candidate - champion)
    diff = diff[np.isfinite(diff)]
    if diff.size < 2:
        return math.nan, math.nan
    return float(diff.mean()), Z95 * float(diff.std(ddof=1)) / math.sqrt(diff.size)


def unpaired_gain(metric: str, candidate: np.ndarray, champion: np.ndarray) -> tuple[float, float]:
    """The same for events each side scored on its own (an A/B split): difference of the
    means and the half-width of its 95% interval (normal approximation)."""
    mean = DIRECTION[metric] * (float(np.nanmean(candidate)) - float(np.nanmean(champion)))
    variance = np.nanvar(candidate, ddof=1) / candidate.size
    variance += np.nanvar(champion, ddof=1) / champion.size
    return mean, Z95 * math.sqrt(variance)


def _number(text: object) -> float:
    try:
        return float(str(text))
    except ValueError:
        return math.nan
