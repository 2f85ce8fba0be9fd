"""A manifest for an ONNX file, computed from a sample of its training data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from stream.errors import SettingsError
from stream.models.manifest import (
    FeatureSpec,
    ModelManifest,
    OutputSpec,
    categorical_reference,
    numeric_reference,
)


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
            codes = values.dropna().astype(str).map({c: i for i, c in enumerate(categories)})
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
            specs.append(
                FeatureSpec(
                    name=column,
                    type="numeric",
                    nullable=nullable,
                    fill=float(np.nanmedian(numbers)) if nullable else 0.0,
                    reference=numeric_reference(numbers),
                )
            )
        else:
            raise SettingsError("--features", f"unknown kind {kind!r} for {column}")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    chosen = output or ("probabilities" if "probabilities" in outputs else outputs[-1])
    if chosen not in outputs:
        raise SettingsError("--output", f"no output {chosen!r} (outputs: {outputs})")
    return ModelManifest(
        name=name,
        version=version,
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        input_name=session.get_inputs()[0].name,
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
