"""Running a bundle over a data set and keeping what the measures need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from agent.engine.dknn import DkNN, Inputs, ScoreBatch
from agent.evaluation.metrics import energy, softmax_max


@dataclass(frozen=True)
class SetScores:
    """What an evaluation keeps from scoring one set with one backend."""

    credibility: np.ndarray
    prediction: np.ndarray
    p_values: np.ndarray
    model_prediction: np.ndarray
    softmax_max: np.ndarray
    energy: np.ndarray
    label_free: np.ndarray  # s(x) = min_j α(x, j), what the drift detector reads
    neighbor_ids: np.ndarray

    def p_of(self, labels: np.ndarray) -> np.ndarray:
        """Each input's p-value for the given label (the true one, or the model's answer)."""
        return self.p_values[np.arange(len(labels)), labels]


def score_set(scorer: DkNN, inputs: Inputs, batch_size: int, label: str, progress: bool = True) -> SetScores:
    """Scores every row of `inputs` (an array, or one per model input) in batches."""
    arrays = scorer.as_inputs(inputs)
    parts: list[ScoreBatch] = []
    for start in tqdm(
        range(0, len(arrays[0]), batch_size), desc=label, unit="batch", leave=False, disable=not progress
    ):
        parts.append(scorer.score([np.ascontiguousarray(array[start : start + batch_size]) for array in arrays]))

    def cat(field: str) -> np.ndarray:
        return np.concatenate([getattr(part, field) for part in parts])

    outputs = cat("model_outputs")
    return SetScores(
        credibility=cat("credibility"),
        prediction=cat("prediction"),
        p_values=cat("p_values"),
        model_prediction=cat("model_prediction"),
        softmax_max=softmax_max(outputs),
        energy=energy(outputs),
        label_free=cat("label_free_score"),
        neighbor_ids=cat("neighbor_ids"),
    )
