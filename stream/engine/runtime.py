"""What the engine scores a batch with: an immutable snapshot of loaded models and routing.

A new deployment revision is loaded and warmed up off the hot path
(``build_runtime``); the engine swaps it in between two batches, so no event
is scored by a half-loaded deployment.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.deploy.state import Router, Snapshot
from stream.engine.features import FeatureBuilder
from stream.models.key import ModelKey
from stream.models.registry import ModelRegistry
from stream.models.runtime import OnnxModel
from stream.settings import PipelineConfig


@dataclass(frozen=True)
class ServingModel:
    key: ModelKey
    model: OnnxModel
    features: FeatureBuilder


@dataclass(frozen=True)
class Runtime:
    snapshot: Snapshot
    router: Router
    models: dict[ModelKey, ServingModel]

    @property
    def revision(self) -> int:
        return self.snapshot.revision

    def variant_of(self, key: ModelKey) -> str:
        """The role a model version plays in this revision."""
        for i, w in enumerate(self.snapshot.serving):
            if w.model == key:
                return "champion" if i == 0 else "challenger"
        if key in self.snapshot.shadows:
            return "shadow"
        for rule in self.snapshot.rules:
            if rule.model == key:
                return rule.variant
        return "fallback"


def build_runtime(
    pipeline: PipelineConfig,
    snapshot: Snapshot,
    registry: ModelRegistry,
    previous: Runtime | None = None,
) -> Runtime:
    """Load (verify, warm up) every model the snapshot needs; reuse those already loaded.

    Raises ModelLoadError if any model fails: the previous runtime keeps serving.
    """
    models: dict[ModelKey, ServingModel] = {}
    for key in sorted(snapshot.models(), key=str):
        if previous is not None and key in previous.models:
            models[key] = previous.models[key]
            continue
        model = registry.load(key.name, key.version)
        features = FeatureBuilder(
            model.manifest, pipeline.input.event_id_field, pipeline.input.event_time_field
        )
        models[key] = ServingModel(key, model, features)
    return Runtime(snapshot=snapshot, router=Router(snapshot), models=models)
