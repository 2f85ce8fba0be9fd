"""The ONNX runtime of one model version: load(), predict(batch), unload()."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stream.errors import ModelLoadError
from stream.models.manifest import ModelManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """Outputs for a batch, one entry per row."""

    label_index: np.ndarray  # int64; -1 for regressors
    score: np.ndarray  # float64
    confidence: np.ndarray  # float64
    probabilities: np.ndarray  # float64, shape (n, classes); (n, 0) for regressors


class OnnxModel:
    """One model version. Verified and warmed up before it may serve."""

    def __init__(self, manifest: ModelManifest, onnx_path: Path, threads: int = 1) -> None:
        self.manifest = manifest
        self.onnx_path = onnx_path
        self._threads = threads
        self._session: ort.InferenceSession | None = None
        self._output_index = 0

    @property
    def key(self) -> str:
        return f"{self.manifest.name}:{self.manifest.version}"

    def load(self) -> None:
        """Verify the checksum, the input signature and a warm-up batch; raise ModelLoadError."""
        self.manifest.verify_checksum(self.onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(self.onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(f"{self.key}: onnxruntime cannot load the model: {exc}") from None
        self._check_signature(session)
        self._session = session
        try:
            self.predict(np.zeros((4, len(self.manifest.features)), dtype=np.float32))
        except Exception as exc:
            self._session = None
            raise ModelLoadError(f"{self.key}: warm-up batch failed: {exc}") from None
        log.info("loaded model %s from %s", self.key, self.onnx_path)

    def _check_signature(self, session: ort.InferenceSession) -> None:
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != self.manifest.input_name:
            names = [i.name for i in inputs]
            raise ModelLoadError(
                f"{self.key}: expected one input named {self.manifest.input_name!r}, got {names}"
            )
        shape = inputs[0].shape
        width = shape[1] if len(shape) == 2 else None
        if len(shape) != 2 or (isinstance(width, int) and width != len(self.manifest.features)):
            raise ModelLoadError(
                f"{self.key}: input shape {shape} does not match "
                f"{len(self.manifest.features)} features"
            )
        if inputs[0].type != "tensor(float)":
            raise ModelLoadError(f"{self.key}: input type {inputs[0].type}, expected tensor(float)")
        outputs = [o.name for o in session.get_outputs()]
        wanted = self.manifest.output.probabilities
        if wanted not in outputs:
            raise ModelLoadError(f"{self.key}: no output named {wanted!r} (outputs: {outputs})")
        self._output_index = outputs.index(wanted)

    def predict(self, batch: np.ndarray) -> Prediction:
        """Score a float32 matrix whose columns are the manifest's features, in order."""
        if self._session is None:
            raise ModelLoadError(f"{self.key}: not loaded")
        out = self._session.run(None, {self.manifest.input_name: batch})[self._output_index]
        values = np.asarray(out, dtype=np.float64)
        spec = self.manifest.output
        n = batch.shape[0]
        if spec.kind == "regressor":
            score = values.reshape(n)
            return Prediction(
                label_index=np.full(n, -1, dtype=np.int64),
                score=score,
                confidence=np.ones(n),
                probabilities=np.empty((n, 0)),
            )
        probs = values.reshape(n, -1)
        if probs.shape[1] != len(spec.labels):
            raise ValueError(
                f"model returned {probs.shape[1]} classes for {len(spec.labels)} labels"
            )
        positive = spec.positive_index
        if positive is not None:
            score = probs[:, positive]
            is_positive = score >= spec.threshold
            label_index = np.where(is_positive, positive, 1 - positive).astype(np.int64)
            confidence = np.where(is_positive, score, 1.0 - score)
        else:
            label_index = probs.argmax(axis=1).astype(np.int64)
            score = probs[np.arange(n), label_index]
            confidence = score
        return Prediction(label_index, score, confidence, probs)

    def unload(self) -> None:
        self._session = None
