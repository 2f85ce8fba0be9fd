"""Model manifests, the folder registry and the ONNX runtime."""

from stream.models.manifest import FeatureSpec, ModelManifest, OutputSpec, Reference
from stream.models.registry import ModelRegistry
from stream.models.runtime import OnnxModel, Prediction

__all__ = [
    "FeatureSpec",
    "ModelManifest",
    "ModelRegistry",
    "OnnxModel",
    "OutputSpec",
    "Prediction",
    "Reference",
]
