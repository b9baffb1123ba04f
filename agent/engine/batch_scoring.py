"""Batch scoring of a `.npy` file into JSON lines: the engine behind `dknn-agent score`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from agent.engine.dknn import DkNN, ScoreBatch
from agent.errors import DataError


def load_inputs(path: Path) -> np.ndarray:
    """Memory-maps a `.npy` file (never unpickles) so large inputs stream batch by batch."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def score_batches(scorer: DkNN, x: np.ndarray, batch_size: int) -> Iterator[tuple[int, ScoreBatch]]:
    """Yields `(offset, scores)` per batch after checking dtype and shape once up front."""
    scorer.check_layout(x.shape, x.dtype)
    for start in range(0, len(x), batch_size):
        yield start, scorer.score(np.ascontiguousarray(x[start : start + batch_size]))


def records(offset: int, scores: ScoreBatch) -> Iterator[dict]:
    """One JSON-ready record per input: the `score` command's output schema."""
    for i in range(len(scores)):
        yield {
            "index": offset + i,
            "prediction": int(scores.prediction[i]),
            "credibility": float(scores.credibility[i]),
            "confidence": float(scores.confidence[i]),
            "model_prediction": int(scores.model_prediction[i]),
            "p_values": [float(p) for p in scores.p_values[i]],
        }


def write_jsonl(scorer: DkNN, x: np.ndarray, batch_size: int, sink: IO[str]) -> int:
    written = 0
    for offset, scores in score_batches(scorer, x, batch_size):
        for record in records(offset, scores):
            sink.write(json.dumps(record) + "\n")
            written += 1
    return written
