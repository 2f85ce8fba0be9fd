"""One retraining: labeled events from the log → the trainer → a candidate → the gate →
the registry (passed or rejected) and ClickHouse ``model_validations``."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stream.deploy.commands import ChangeResult, change_deployment
from stream.deploy.control import record_step
from stream.errors import RetrainError, SettingsError
from stream.models.key import ModelKey
from stream.models.manifest import (
    ONNX_FILE,
    FeatureSpec,
    ModelManifest,
    categorical_reference,
    numeric_reference,
)
from stream.models.reference import onnx_signature, with_output_references
from stream.models.registry import ModelRegistry
from stream.models.runtime import OnnxModel
from stream.retrain.dataset import SCORED, LabeledEvents, read_labeled_events
from stream.retrain.gate import GateResult, judge
from stream.retrain.trainer import LABEL, TrainedModel, TrainingTask, load_trainer
from stream.settings import PipelineConfig

log = logging.getLogger(__name__)

VALIDATION_COLUMNS = (
    "pipeline", "model", "model_version", "champion", "metric", "segment", "segment_value",
    "labeled", "candidate_value", "champion_value", "gain", "rule", "passed", "reason",
    "validated_at",
)  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    manifest: ModelManifest
    folder: Path
    gate: GateResult
    train_rows: int

    @property
    def key(self) -> ModelKey:
        return ModelKey(name=self.manifest.name, version=self.manifest.version)


def retrain(
    client: Any,
    registry: ModelRegistry,
    pipeline: PipelineConfig,
    champion: ModelKey,
    trainer_ref: str,
    since: datetime,
    until: datetime,
    version: str | None = None,
    seed: int = 0,
) -> Candidate:
    """Train, judge and register a candidate to replace ``champion``, and write the gate's
    rows to ClickHouse; RetrainError when there is too little to train on or the trainer
    fails, ModelLoadError when what it made cannot serve."""
    reference = registry.manifest(champion.name, champion.version)
    segments = pipeline.quality.segments
    events = read_labeled_events(client, pipeline.name, reference, segments, since, until)
    candidate = train_and_judge(events, registry, pipeline, champion, trainer_ref, version, seed)
    write_validations(client, pipeline.name, candidate.manifest, candidate.gate)
    return candidate


def train_and_judge(
    events: LabeledEvents,
    registry: ModelRegistry,
    pipeline: PipelineConfig,
    champion: ModelKey,
    trainer_ref: str,
    version: str | None = None,
    seed: int = 0,
) -> Candidate:
    """The part of a retraining that needs no ClickHouse: train on the older events, judge
    on the newer ones, register the candidate with the verdict."""
    spec = pipeline.retrain
    if len(events) < spec.min_rows:
        raise RetrainError(
            f"{len(events):,} labeled events of {champion.name} in the prediction log of "
            f"{pipeline.name}; retrain.min_rows is {spec.min_rows:,}"
        )
    if version is not None and registry.exists(champion.name, version):
        raise SettingsError("--version", f"{champion.name}:{version} is already registered")
    reference = registry.manifest(champion.name, champion.version)
    train, holdout = events.split(spec.holdout_share)
    trained = _train(trainer_ref, train, reference, seed)
    version = version or registry.next_version(champion.name)
    manifest = _candidate_manifest(reference, trained, version, train, holdout)
    manifest = manifest.model_copy(
        update={
            "training": {
                "trainer": trainer_ref,
                "data": f"prediction_log and feedback of pipeline {pipeline.name}",
                "since": _iso(train.frame[SCORED].iloc[0]),
                "until": _iso(train.frame[SCORED].iloc[-1]),
                "rows": len(train),
                "holdout_since": _iso(holdout.frame[SCORED].iloc[0]),
                "holdout_rows": len(holdout),
                "champion": str(champion),
                **_plain(trained.metadata),
            }
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ONNX_FILE
        path.write_bytes(trained.onnx)
        candidate = OnnxModel(manifest, path)
        candidate.load()
        incumbent = registry.load(champion.name, champion.version)
        gate = judge(candidate, incumbent, holdout, spec)
    metrics = {r.metric: round(r.candidate, 6) for r in gate.rows if r.segment == "all"}
    manifest = manifest.model_copy(
        update={
            "validation": gate.verdict(str(champion)),
            "training": {**manifest.training, "holdout_metrics": metrics},
        }
    )
    manifest = ModelManifest.model_validate(manifest.model_dump())
    folder_path = registry.register(trained.onnx, manifest)
    log.info(
        "%s:%s %s the gate against %s", manifest.name, version,
        "passed" if gate.passed else "failed", champion,
    )  # fmt: skip
    return Candidate(manifest, folder_path, gate, len(train))


def announce(
    kafka_config: dict[str, Any],
    pipeline: PipelineConfig,
    registry: ModelRegistry,
    candidate: Candidate,
    trainer_ref: str,
    revision: int,
    actor: str,
    reason: str,
    timeout: float = 30.0,
) -> ChangeResult | None:
    """Put the retraining and the gate's verdict on the record; deploy a candidate that
    passed as a shadow when the pipeline's policy says so (its ChangeResult, else None)."""
    gate = candidate.gate
    key = str(candidate.key)
    champion = candidate.manifest.validation.champion if candidate.manifest.validation else ""
    summary = f"{gate.metric} {gate.overall.candidate:.4f} vs {gate.overall.champion:.4f}"
    record_step(
        kafka_config, pipeline.name, revision, "retrained",
        f"{key} trained on {candidate.train_rows:,} events by {trainer_ref}", key, actor, reason,
    )  # fmt: skip
    record_step(
        kafka_config, pipeline.name, revision, "passed_gate" if gate.passed else "failed_gate",
        f"{key} against {champion}: {summary}", key, actor, "; ".join(gate.reasons) or summary,
    )  # fmt: skip
    if not (gate.passed and pipeline.retrain.shadow_on_pass):
        return None
    return change_deployment(
        kafka_config, pipeline, lambda s: s.deploy(candidate.key, shadow=True), registry,
        timeout, "policy:retrain.shadow_on_pass", f"passed the gate: {summary}",
    )  # fmt: skip


def _train(
    trainer_ref: str, train: LabeledEvents, reference: ModelManifest, seed: int
) -> TrainedModel:
    trainer = load_trainer(trainer_ref)
    task = TrainingTask(
        features=train.features,
        labels=list(reference.output.labels) if reference.output.kind == "classifier" else [],
        input_name=reference.input_name,
        seed=seed,
    )
    frame = pd.DataFrame(train.model_input(reference), columns=train.features)
    frame[LABEL] = train.frame[LABEL].to_numpy()
    try:
        trained = trainer(frame, task)
    except Exception as exc:
        raise RetrainError(f"trainer {trainer_ref} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(trained, TrainedModel) or not isinstance(trained.onnx, bytes):
        raise RetrainError(
            f"trainer {trainer_ref} returned {type(trained).__name__}, not a TrainedModel"
        )
    return trained


def _candidate_manifest(
    reference: ModelManifest,
    trained: TrainedModel,
    version: str,
    train: LabeledEvents,
    holdout: LabeledEvents,
) -> ModelManifest:
    """The champion's input and output contract with the candidate's file, and reference
    histograms of the data it was trained on (the monitor's new baseline)."""
    input_name, outputs = onnx_signature(trained.onnx)
    wanted = reference.output.probabilities
    chosen = wanted if wanted in outputs else outputs[-1]
    features = [
        _fresh(spec, train.frame[spec.name].to_numpy(np.float64)) for spec in reference.features
    ]
    manifest = reference.model_copy(
        update={
            "version": version,
            "onnx_sha256": hashlib.sha256(trained.onnx).hexdigest(),
            "input_name": input_name,
            "features": features,
            "output": reference.output.model_copy(update={"probabilities": chosen}),
            "score_reference": None,
            "confidence_reference": None,
            "validation": None,
        }
    )
    # Scores on events the candidate did not learn from: its training rows would
    # make the reference more confident than live traffic.
    return with_output_references(manifest, trained.onnx, holdout.model_input(manifest))


def _fresh(spec: FeatureSpec, values: np.ndarray) -> FeatureSpec:
    present = values[np.isfinite(values)]
    if present.size == 0:
        return spec  # nothing logged for it: keep the champion's reference
    if spec.type == "categorical":
        codes = present.astype(np.int64)
        codes = codes[(codes >= 0) & (codes < len(spec.categories))]
        ref = categorical_reference(codes, len(spec.categories))
    else:
        ref = numeric_reference(present)
    return spec.model_copy(update={"reference": ref})


def write_validations(
    client: Any, pipeline: str, manifest: ModelManifest, gate: GateResult
) -> None:
    at = datetime.now(UTC)
    champion = manifest.validation.champion if manifest.validation else ""
    rows = []
    for r in gate.rows:
        judged = [r.metric, r.segment, r.segment_value, r.labeled, r.candidate, r.champion]
        judged += [r.gain, r.rule, int(r.passed), r.reason]
        rows.append([pipeline, manifest.name, manifest.version, champion, *judged, at])
    client.insert("model_validations", rows, column_names=list(VALIDATION_COLUMNS))


def _iso(value: Any) -> str:
    return pd.Timestamp(value).isoformat()


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    """The trainer's metadata as YAML can hold it (numpy numbers become plain ones)."""
    return dict(json.loads(json.dumps(metadata, default=lambda o: getattr(o, "item", str)())))
