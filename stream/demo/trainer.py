"""The demo's trainer: scikit-learn gradient boosting, exported to ONNX with skl2onnx.

Also what ``retrain.trainer`` names by default (``stream.demo.trainer:train``).
Needs the ``train`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from stream.retrain.trainer import TrainedModel, TrainingTask, class_indices

if TYPE_CHECKING:
    from sklearn.ensemble import GradientBoostingClassifier

TREES = 100
DEPTH = 3


def gradient_boosting_onnx(
    x: np.ndarray, y: np.ndarray, input_name: str, trees: int, depth: int, seed: int
) -> tuple[bytes, GradientBoostingClassifier]:
    """Fit on float32 rows ``x`` and class indices ``y``; the ONNX output ``probabilities``
    has one column per class index."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier

    clf = GradientBoostingClassifier(n_estimators=trees, max_depth=depth, random_state=seed)
    clf.fit(x, y)
    onx = to_onnx(
        clf,
        initial_types=[(input_name, FloatTensorType([None, x.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString(), clf


def train(frame: pd.DataFrame, task: TrainingTask) -> TrainedModel:
    """A classifier on the task's features; every class must occur in the frame."""
    if not task.classifier:
        raise ValueError("the demo trainer trains classifiers only")
    y = class_indices(frame, task).to_numpy()
    absent = [label for i, label in enumerate(task.labels) if not (y == i).any()]
    if absent:
        raise ValueError(f"no training event is labeled {absent}: cannot learn those classes")
    x = frame[task.features].to_numpy(dtype=np.float32)
    onnx_bytes, _ = gradient_boosting_onnx(x, y, task.input_name, TREES, DEPTH, task.seed)
    shares = np.bincount(y, minlength=len(task.labels)) / len(y)
    return TrainedModel(
        onnx_bytes,
        {
            "algorithm": (
                f"sklearn GradientBoostingClassifier(n_estimators={TREES}, max_depth={DEPTH})"
            ),
            "label_shares": {
                label: round(float(s), 4) for label, s in zip(task.labels, shares, strict=True)
            },
        },
    )
