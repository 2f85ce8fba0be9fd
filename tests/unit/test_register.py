from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from stream.demo.data import CATEGORIES, FEATURES, generate
from stream.models.manifest import ModelManifest
from stream.models.registry import ModelRegistry


def reference_csv(path: Path) -> Path:
    cols, _ = generate(2_000, np.random.default_rng(4))
    frame = pd.DataFrame({f: cols[f] for f in FEATURES})
    for name, cats in CATEGORIES.items():
        frame[name] = [cats[int(i)] for i in frame[name]]
    frame.to_csv(path, index=False)
    return path


def test_register_computes_manifest_and_verifies(
    trained_model: tuple[bytes, ModelManifest], tmp_path: Path
) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(trained_model[0])
    csv = reference_csv(tmp_path / "train.csv")
    features = ",".join(
        f"{f}:categorical={'|'.join(CATEGORIES[f])}" if f in CATEGORIES else f for f in FEATURES
    )
    env = {**os.environ, "STREAM_REGISTRY": str(tmp_path / "registry")}

    def register() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stream", "models", "register", str(onnx_file),
             "--name", "fraud", "--reference", str(csv), "--features", features,
             "--labels", "legit,fraud", "--positive", "fraud"],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip

    first = register()
    assert first.returncode == 0, first.stderr
    assert "registered fraud:1" in first.stdout
    assert register().returncode == 0, "the next number is the next version"
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.versions("fraud") == ["1", "2"]
    manifest = registry.manifest("fraud", "1")
    assert manifest.feature_names == FEATURES
    channel = manifest.features[FEATURES.index("channel")]
    assert channel.categories == CATEGORIES["channel"]
    assert sum(channel.reference.counts) == 2_000
    assert manifest.features[FEATURES.index("device_age_days")].nullable
    assert manifest.output.positive_index == 1
    # The model's scores and confidences on the reference: prediction drift has a baseline.
    assert manifest.score_reference is not None and manifest.confidence_reference is not None
    assert (
        sum(manifest.score_reference.counts) == sum(manifest.confidence_reference.counts) == 2_000
    )
    assert sum(manifest.confidence_reference.counts[:5]) == 0, "confidence is at least 0.5"
    registry.load("fraud", "1")


def test_register_refuses_unknown_columns(
    trained_model: tuple[bytes, ModelManifest], tmp_path: Path
) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(trained_model[0])
    result = subprocess.run(
        [sys.executable, "-m", "stream", "models", "register", str(onnx_file), "--name", "x",
         "--reference", str(reference_csv(tmp_path / "t.csv")), "--features", "amount,nope"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "STREAM_REGISTRY": str(tmp_path / "r")},
    )  # fmt: skip
    assert result.returncode == 2
    assert "error: --features: 'nope' is not a column" in result.stderr
