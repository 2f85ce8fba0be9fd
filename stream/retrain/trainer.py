"""What a trainer is: a plain function from a DataFrame to an ONNX model plus metadata.

A pipeline names its trainer as ``MODULE:FUNCTION`` (``retrain.trainer``). The
function gets the labeled events as the model sees them (one column per
feature, in input order, nulls already filled and categories as their index)
and a ``TrainingTask`` saying what the model must output; it returns the ONNX
bytes and whatever it wants recorded in ``model.yaml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from stream.errors import SettingsError

LABEL = "label"


@dataclass(frozen=True)
class TrainingTask:
    features: list[str]  # the frame's feature columns, in the model's input order
    labels: list[str]  # class labels in the order the output's columns must have; [] regressors
    input_name: str  # the ONNX input's name the pipeline's workers feed
    seed: int = 0

    @property
    def classifier(self) -> bool:
        return bool(self.labels)


@dataclass(frozen=True)
class TrainedModel:
    onnx: bytes
    metadata: dict[str, Any] = field(default_factory=dict)


Trainer = Callable[[pd.DataFrame, TrainingTask], TrainedModel]


def load_trainer(reference: str) -> Trainer:
    """The function a ``MODULE:FUNCTION`` reference names; SettingsError naming it if none."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise SettingsError("retrain.trainer", f"expected MODULE:FUNCTION, got {reference!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SettingsError("retrain.trainer", f"cannot import {module_name}: {exc}") from None
    trainer = getattr(module, attribute, None)
    if not callable(trainer):
        raise SettingsError("retrain.trainer", f"{module_name} has no function {attribute}")
    return trainer


def class_indices(frame: pd.DataFrame, task: TrainingTask) -> pd.Series:
    """The label column as class indices in the task's label order; unknown labels raise."""
    index = {label: i for i, label in enumerate(task.labels)}
    codes = frame[LABEL].map(index)
    unknown = sorted(set(frame[LABEL][codes.isna()]))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the model's {task.labels}")
    return codes.astype("int64")
