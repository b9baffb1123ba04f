"""The benchmark's unit of evaluation data, in a leaf module of its own.

It lives here, not in `bench.perturbations` (which re-exports it), so that the natural sets
(`dknn_lab.natural_sets`) and the benchmark (`dknn_lab.bench`) can both use it while
the benchmark imports the natural sets: importing it from `bench` would make a cycle between the
two siblings, which the import contracts forbid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EvalSet:
    """Inputs plus the labels they should carry (None where no label is meaningful, e.g. noise)."""

    name: str
    x: np.ndarray
    y: np.ndarray | None
