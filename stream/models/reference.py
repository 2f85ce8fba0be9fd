"""A manifest for an ONNX file, computed from a sample of its training data."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from stream.errors import ModelLoadError, SettingsError
from stream.models.manifest import (
    FeatureSpec,
    ModelManifest,
    OutputSpec,
    categorical_reference,
    numeric_reference,
)
from stream.models.runtime import OnnxModel
from stream.monitor.histograms import score_reference


def read_reference(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    raise SettingsError("--reference", f"expected a .csv or .parquet file, got {path.name}")


def build_manifest(
    onnx_bytes: bytes,
    name: str,
    version: str,
    reference: Path,
    features: list[str],
    labels: list[str],
    positive: str | None = None,
    threshold: float = 0.5,
    output: str | None = None,
) -> ModelManifest:
    """Reference histograms per feature from ``reference``; the input and output from the file."""
    data = read_reference(reference)
    specs = []
    columns: list[np.ndarray] = []  # the model's input, as a worker would build it
    for item in features:
        column, _, kind = item.partition(":")
        if column not in data.columns:
            raise SettingsError("--features", f"{column!r} is not a column of {reference.name}")
        values = data[column]
        kind, _, listed = kind.partition("=")
        if kind == "categorical":
            # The model encodes a category as its index: in the order given
            # (NAME:categorical=a|b|c), else in sorted order.
            seen = sorted(str(v) for v in values.dropna().unique())
            categories = listed.split("|") if listed else seen
            unknown = set(seen) - set(categories)
            if unknown:
                raise SettingsError("--features", f"{column}: values {sorted(unknown)} not listed")
            index = {c: i for i, c in enumerate(categories)}
            codes = values.dropna().astype(str).map(index)
            columns.append(values.astype(str).map(index).to_numpy(dtype=np.float64, na_value=0.0))
            specs.append(
                FeatureSpec(
                    name=column,
                    type="categorical",
                    categories=categories,
                    reference=categorical_reference(codes.to_numpy(), len(categories)),
                )
            )
        elif kind in ("", "numeric"):
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            nullable = bool(np.isnan(numbers).any())
            fill = float(np.nanmedian(numbers)) if nullable else 0.0
            columns.append(np.where(np.isnan(numbers), fill, numbers))
            specs.append(
                FeatureSpec(
                    name=column,
                    type="numeric",
                    nullable=nullable,
                    fill=fill,
                    reference=numeric_reference(numbers),
                )
            )
        else:
            raise SettingsError("--features", f"unknown kind {kind!r} for {column}")
    input_name, outputs = onnx_signature(onnx_bytes)
    chosen = output or ("probabilities" if "probabilities" in outputs else outputs[-1])
    if chosen not in outputs:
        raise SettingsError("--output", f"no output {chosen!r} (outputs: {outputs})")
    manifest = ModelManifest(
        name=name,
        version=version,
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        input_name=input_name,
        features=specs,
        output=OutputSpec(
            kind="classifier" if labels else "regressor",
            labels=labels,
            positive_label=positive,
            threshold=threshold,
            probabilities=chosen,
        ),
        training={"reference": reference.name, "rows": len(data)},
    )
    return with_output_references(manifest, onnx_bytes, np.column_stack(columns))


def onnx_signature(onnx_bytes: bytes) -> tuple[str, list[str]]:
    """The name of a model's first input and the names of its outputs."""
    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load the model: {exc}") from None
    return session.get_inputs()[0].name, [o.name for o in session.get_outputs()]


def with_output_references(
    manifest: ModelManifest, onnx_bytes: bytes, inputs: np.ndarray
) -> ModelManifest:
    """The manifest with the histograms of the model's scores and confidences on ``inputs``
    (classifiers; a regressor's values have no fixed range to bin). A model that does not
    score them gets none: registering it fails on its own checks, with their reason."""
    if manifest.output.kind != "classifier":
        return manifest
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(onnx_bytes)
        model = OnnxModel(manifest, path)
        try:
            model.load()
            prediction = model.predict(inputs.astype(np.float32))
        except (ModelLoadError, ValueError):
            return manifest
    return manifest.model_copy(
        update={
            "score_reference": score_reference(prediction.score),
            "confidence_reference": score_reference(prediction.confidence),
        }
    )
