"""Batch scoring of a data set (agent.engine.data_files) into JSON lines: the engine behind `dknn-agent score`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO

import numpy as np

from agent.engine.data_files import Dataset
from agent.engine.dknn import DkNN, ScoreBatch


def score_batches(scorer: DkNN, data: Dataset, batch_size: int) -> Iterator[tuple[int, ScoreBatch]]:
    """Yields `(offset, scores)` per batch after checking dtypes and shapes once up front."""
    arrays = data.arrays_for([spec.name for spec in scorer.manifest.inputs])
    scorer.check_layout(arrays)
    for start in range(0, len(data), batch_size):
        yield start, scorer.score([np.ascontiguousarray(array[start : start + batch_size]) for array in arrays])


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


def write_jsonl(scorer: DkNN, data: Dataset, batch_size: int, sink: IO[str]) -> int:
    written = 0
    for offset, scores in score_batches(scorer, data, batch_size):
        for record in records(offset, scores):
            sink.write(json.dumps(record) + "\n")
            written += 1
    return written
