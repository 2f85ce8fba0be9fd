from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream.errors import ModelLoadError
from stream.models.manifest import ONNX_FILE, ModelManifest, numeric_reference
from stream.models.registry import ModelRegistry


def test_registry_loads_verified_model(registry: ModelRegistry) -> None:
    model = registry.load("payments-fraud", "1")
    batch = np.zeros((3, len(model.manifest.features)), dtype=np.float32)
    out = model.predict(batch)
    assert out.probabilities.shape == (3, 2)
    assert np.allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert ((out.confidence >= 0.5) & (out.confidence <= 1.0)).all()
    assert registry.versions("payments-fraud") == ["1", "2", "corrupt", "wrong-shape"]


def test_manifest_round_trip(registry: ModelRegistry, tmp_path: Path) -> None:
    manifest = registry.manifest("payments-fraud", "1")
    manifest.write(tmp_path)
    assert ModelManifest.read(tmp_path) == manifest


def test_a_versions_manifest_is_parsed_again_only_when_registered_again(
    trained_model: tuple[bytes, ModelManifest], tmp_path: Path, manifests_parsed: list[Path]
) -> None:
    """The monitor and the quality job ask for a manifest on every window; a YAML parse
    holds the interpreter lock the scoring thread needs, so it happens once per file."""
    onnx_bytes, manifest = trained_model
    registry = ModelRegistry(tmp_path)
    registry.register(onnx_bytes, manifest)

    first = [registry.manifest("payments-fraud", "1") for _ in range(3)]
    output = manifest.output.model_copy(update={"threshold": 0.61})
    registry.register(onnx_bytes, manifest.model_copy(update={"output": output}))
    again = registry.manifest("payments-fraud", "1")

    assert len(manifests_parsed) == 2
    assert first == [manifest] * 3
    assert again.output.threshold == 0.61


def test_checksum_mismatch_is_rejected(
    trained_model: tuple[bytes, ModelManifest], tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path)
    folder = registry.register(*trained_model)
    (folder / ONNX_FILE).write_bytes(trained_model[0] + b"tampered")
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        registry.load("payments-fraud", "1")


def test_missing_model_file_is_rejected(
    trained_model: tuple[bytes, ModelManifest], tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path)
    folder = registry.register(*trained_model)
    (folder / ONNX_FILE).unlink()
    with pytest.raises(ModelLoadError, match="no model file"):
        registry.load("payments-fraud", "1")


def test_feature_count_must_match_model_input(
    trained_model: tuple[bytes, ModelManifest], tmp_path: Path
) -> None:
    onnx_bytes, manifest = trained_model
    fewer = manifest.model_copy(update={"features": manifest.features[:-1]})
    ModelRegistry(tmp_path).register(onnx_bytes, fewer)
    with pytest.raises(ModelLoadError, match="does not match"):
        ModelRegistry(tmp_path).load("payments-fraud", "1")


def test_register_refuses_wrong_checksum(
    trained_model: tuple[bytes, ModelManifest], tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="checksum"):
        ModelRegistry(tmp_path).register(b"not onnx", trained_model[1])


def test_unknown_model_and_broken_manifest(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ModelLoadError, match="not in the registry"):
        registry.load("nope", "1")
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.yaml").write_text("name: bad\nversion: 1\n")
    with pytest.raises(ModelLoadError, match="not a valid manifest"):
        registry.load("bad", "1")


def test_numeric_reference_bins() -> None:
    values = np.concatenate([np.arange(1000, dtype=float), [np.nan]])
    ref = numeric_reference(values, bins=4)
    assert ref.edges == pytest.approx([249.75, 499.5, 749.25])
    assert ref.counts == [250, 250, 250, 250]
    assert ref.mean == pytest.approx(499.5)
