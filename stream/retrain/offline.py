"""``python -m stream.retrain.offline JOB_FOLDER``: one retraining in a process of its own.

A worker's retraining jobs run here, so that training never competes with
scoring for the worker's interpreter. The worker reads the labeled events from
its ClickHouse (the embedded engine allows one process per data folder) into
``events.parquet`` and writes ``job.json``; this process trains, judges and
registers the candidate and writes ``result.json``: the gate's rows, which the
worker puts into ClickHouse, or the error.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from stream import logs
from stream.errors import StreamError
from stream.models.key import ModelKey
from stream.models.registry import ModelRegistry
from stream.retrain.dataset import LabeledEvents
from stream.retrain.gate import GateResult, GateRow
from stream.retrain.job import train_and_judge
from stream.settings import PipelineConfig, load_settings

JOB = "job.json"
EVENTS = "events.parquet"
RESULT = "result.json"


def write_job(
    folder: Path, pipeline: PipelineConfig, champion: ModelKey, events: LabeledEvents
) -> None:
    events.frame.to_parquet(folder / EVENTS)
    job = {
        "pipeline": pipeline.model_dump(mode="json", by_alias=True),
        "champion": str(champion),
        "features": events.features,
        "segments": events.segments,
    }
    (folder / JOB).write_text(json.dumps(job))


def read_result(folder: Path) -> dict[str, Any]:
    """``{"candidate", "train_rows", "gate"}``, or ``{"error"}``."""
    path = folder / RESULT
    if not path.is_file():
        return {"error": "the job ended without a result"}
    return dict(json.loads(path.read_text()))


def gate_of(result: dict[str, Any]) -> GateResult:
    gate = result["gate"]
    return GateResult(gate["metric"], [GateRow(**r) for r in gate["rows"]], gate["holdout_rows"])


def run(folder: Path) -> int:
    job = json.loads((folder / JOB).read_text())
    settings = load_settings()
    logs.setup(settings.log_level, settings.log_format)
    pipeline = PipelineConfig.model_validate(job["pipeline"])
    events = LabeledEvents(pd.read_parquet(folder / EVENTS), job["features"], job["segments"])
    try:
        candidate = train_and_judge(
            events, ModelRegistry(settings.registry_path), pipeline,
            ModelKey.parse(job["champion"]), pipeline.retrain.trainer,
        )  # fmt: skip
    except StreamError as exc:
        (folder / RESULT).write_text(json.dumps({"error": str(exc)}))
        return 1
    gate = candidate.gate
    result = {
        "candidate": str(candidate.key),
        "train_rows": candidate.train_rows,
        "gate": {
            "metric": gate.metric,
            "holdout_rows": gate.holdout_rows,
            "rows": [asdict(r) for r in gate.rows],
        },
    }
    (folder / RESULT).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
