"""``model.yaml``: what a model expects, what it outputs and what its training data looked like."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from stream.errors import ModelLoadError

MANIFEST_FILE = "model.yaml"
ONNX_FILE = "model.onnx"
# libyaml's parser where PyYAML was built with it: the same values, about seven times
# faster than the pure-Python one, which in a worker also holds back the scoring
# thread (it takes the interpreter lock a switch interval at a time while it parses).
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Reference(_Frozen):
    """A training-data histogram.

    Numeric features: ``edges`` are the inner bin edges (k edges, k+1 bins, the
    outer bins open-ended). Categorical features: one count per category.
    """

    edges: list[float] = []
    counts: list[int]
    mean: float | None = None
    std: float | None = None

    @model_validator(mode="after")
    def _shape(self) -> Reference:
        if self.edges and len(self.counts) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} counts")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase")
        return self


class FeatureSpec(_Frozen):
    name: str
    type: Literal["numeric", "categorical"]
    categories: list[str] = []
    nullable: bool = False
    fill: float = 0.0
    reference: Reference

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.type == "categorical":
            if not self.categories:
                raise ValueError(f"categorical feature {self.name} needs categories")
            if len(self.reference.counts) != len(self.categories):
                raise ValueError(f"{self.name}: one reference count per category")
        elif not self.reference.edges:
            raise ValueError(f"numeric feature {self.name} needs reference edges")
        return self


class OutputSpec(_Frozen):
    kind: Literal["classifier", "regressor"] = "classifier"
    labels: list[str] = []
    positive_label: str | None = None
    threshold: float = Field(0.5, ge=0, le=1)
    probabilities: str = "probabilities"
    """Name of the ONNX output holding class probabilities (or the value, for regressors)."""

    @model_validator(mode="after")
    def _labels(self) -> OutputSpec:
        if self.kind == "classifier" and len(self.labels) < 2:
            raise ValueError("a classifier needs at least two labels")
        if self.positive_label is not None and self.positive_label not in self.labels:
            raise ValueError(f"positive_label {self.positive_label!r} is not among the labels")
        return self

    @property
    def positive_index(self) -> int | None:
        """Index of the positive class for binary classifiers; None otherwise."""
        if self.kind != "classifier" or len(self.labels) != 2:
            return None
        return self.labels.index(self.positive_label) if self.positive_label else 1


class Validation(_Frozen):
    """The gate's verdict on a retrained candidate against the champion it would replace."""

    status: Literal["passed", "rejected"]
    champion: str
    metric: str
    candidate_value: float
    champion_value: float
    holdout_rows: int
    reasons: list[str] = []
    validated_at: str = ""


class ModelManifest(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input_name: str = "features"
    features: list[FeatureSpec]
    output: OutputSpec
    # Histograms of the model's score and confidence on its training data, on
    # the ten bins of width 0.1 that the monitor uses (prediction drift).
    score_reference: Reference | None = None
    confidence_reference: Reference | None = None
    training: dict[str, Any] = {}
    validation: Validation | None = None

    @property
    def rejected(self) -> bool:
        return self.validation is not None and self.validation.status == "rejected"

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> str:
        return str(value)

    @model_validator(mode="after")
    def _unique_features(self) -> ModelManifest:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if not names:
            raise ValueError("a model needs at least one feature")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @classmethod
    def read(cls, folder: Path) -> ModelManifest:
        path = folder / MANIFEST_FILE
        try:
            raw = yaml.load(path.read_text(), Loader=_LOADER)
            return cls.model_validate(raw)
        except FileNotFoundError:
            raise ModelLoadError(f"no {MANIFEST_FILE} in {folder}") from None
        except (yaml.YAMLError, PydanticValidationError) as exc:
            raise ModelLoadError(f"{path} is not a valid manifest: {exc}") from None

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST_FILE
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        return path

    def verify_checksum(self, onnx_path: Path) -> None:
        """Refuse a model file whose bytes are not the ones the manifest names."""
        try:
            digest = sha256_file(onnx_path)
        except FileNotFoundError:
            raise ModelLoadError(
                f"{self.name}:{self.version}: no model file at {onnx_path}"
            ) from None
        if digest != self.onnx_sha256:
            raise ModelLoadError(
                f"{self.name}:{self.version}: checksum mismatch for {onnx_path} "
                f"(manifest {self.onnx_sha256[:12]}…, file {digest[:12]}…)"
            )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def numeric_reference(values: np.ndarray, bins: int = 10) -> Reference:
    """Quantile bins of the finite training values, with their counts, mean and std."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("no finite values to build a reference from")
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    if edges.size == 0:
        edges = np.array([float(finite[0])])
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    return Reference(
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        mean=float(finite.mean()),
        std=float(finite.std()),
    )


def categorical_reference(codes: np.ndarray, n_categories: int) -> Reference:
    counts = np.bincount(codes.astype(np.int64), minlength=n_categories)
    return Reference(counts=[int(c) for c in counts])
