"""Labeled events from the prediction log, as a trainer and the gate see them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from stream.models.manifest import ModelManifest
from stream.retrain.trainer import LABEL

SCORED = "scored_time"


def segment_column(name: str) -> str:
    """The frame's column of a segment field (a segment may share a feature's name)."""
    return f"segment:{name}"


@dataclass(frozen=True)
class LabeledEvents:
    """One row per labeled event: raw features (NaN for null), label, segments, scoring time."""

    frame: pd.DataFrame
    features: list[str]
    segments: list[str]

    def __len__(self) -> int:
        return len(self.frame)

    def model_input(self, manifest: ModelManifest) -> np.ndarray:
        """float32 rows as a worker feeds the model: nulls filled as the manifest says."""
        raw = self.frame[self.features].to_numpy(dtype=np.float64)
        fill = np.asarray([f.fill for f in manifest.features], dtype=np.float64)
        return np.where(np.isnan(raw), fill, raw).astype(np.float32)

    def split(self, holdout_share: float) -> tuple[LabeledEvents, LabeledEvents]:
        """The older events to train on and the newest ``holdout_share`` to validate on."""
        cut = len(self.frame) - max(1, round(len(self.frame) * holdout_share))
        older, newer = self.frame.iloc[:cut], self.frame.iloc[cut:]
        return self._with(older), self._with(newer)

    def _with(self, frame: pd.DataFrame) -> LabeledEvents:
        return LabeledEvents(frame.reset_index(drop=True), self.features, self.segments)


def read_labeled_events(
    client: Any,
    pipeline: str,
    manifest: ModelManifest,
    segments: list[str],
    since: datetime,
    until: datetime,
) -> LabeledEvents:
    """Events scored by any version of the manifest's model between ``since`` and ``until``
    that have a label, oldest first. Events logged without every feature the manifest
    names (log_features off, another input) are left out."""
    features = manifest.feature_names
    parameters: dict[str, Any] = {
        "pipeline": pipeline,
        "model": manifest.name,
        "since": since,
        "until": until,
        "names": features,
    }
    columns = []
    for i, name in enumerate(features):
        parameters[f"f{i}"] = name
        columns.append(f"any(p.features[{{f{i}:String}}])")
    for i, name in enumerate(segments):
        parameters[f"s{i}"] = name
        columns.append(f"any(p.segments[{{s{i}:String}}])")
    sql = f"""
        SELECT p.event_id, min(p.scored_time), any(f.label), {", ".join(columns)}
        FROM prediction_log AS p FINAL
        INNER JOIN
        (
            SELECT event_id, label FROM feedback FINAL WHERE pipeline = {{pipeline:String}}
        ) AS f ON p.event_id = f.event_id
        WHERE p.pipeline = {{pipeline:String}} AND p.model = {{model:String}}
          AND p.scored_time >= {{since:DateTime64(3, 'UTC')}}
          AND p.scored_time < {{until:DateTime64(3, 'UTC')}}
          AND hasAll(mapKeys(p.features), {{names:Array(String)}})
        GROUP BY p.event_id
        ORDER BY min(p.scored_time), p.event_id
    """
    rows = client.query(sql, parameters=parameters).result_rows
    names = ["event_id", SCORED, LABEL, *features, *(segment_column(s) for s in segments)]
    frame = pd.DataFrame(rows, columns=names)
    frame[features] = frame[features].astype(np.float64)
    return LabeledEvents(frame, features, list(segments))
