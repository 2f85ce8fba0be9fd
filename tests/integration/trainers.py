"""Trainers for the closed-loop tests, named as MODULE:FUNCTION like any pipeline's."""

from __future__ import annotations

import pandas as pd

from stream.demo.trainer import train
from stream.retrain.trainer import LABEL, TrainedModel, TrainingTask


def inverted(frame: pd.DataFrame, task: TrainingTask) -> TrainedModel:
    """The demo trainer on labels swapped: a model that is confidently wrong."""
    swap = {task.labels[0]: task.labels[1], task.labels[1]: task.labels[0]}
    return train(frame.assign(**{LABEL: frame[LABEL].map(swap)}), task)
