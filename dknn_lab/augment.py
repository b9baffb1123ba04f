"""A larger reference for the scale benchmark: the training images plus seeded random variants.

Each variant is one training image rotated by up to ±12°, scaled by 0.9–1.1 and translated by up
to 2 pixels (one affine warp, bilinear, zero fill), keeping its label: digits a writer could have
drawn, so the index grows the way a bigger training set would rather than with noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional
from tqdm import tqdm

MAX_ROTATION_DEG = 12.0
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT_PX = 2.0
CHUNK = 8192


def with_variants(
    x: np.ndarray, y: np.ndarray, size: int, seed: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """`x` and `y` followed by `size - len(x)` variants of randomly drawn rows; `(N, C, H, W)` float32."""
    extra = size - len(x)
    if extra <= 0:
        return x, y
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(x), (extra,), generator=generator).numpy()
    out_x = np.empty((size, *x.shape[1:]), dtype=np.float32)
    out_x[: len(x)] = x
    out_y = np.concatenate([y, y[rows]])
    height, width = x.shape[-2:]
    for start in tqdm(range(0, extra, CHUNK), desc="variants", unit="chunk", disable=not progress):
        chunk_rows = rows[start : start + CHUNK]
        n = len(chunk_rows)
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(MAX_ROTATION_DEG)
        scale = SCALE_RANGE[0] + torch.rand(n, generator=generator) * (SCALE_RANGE[1] - SCALE_RANGE[0])
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * MAX_SHIFT_PX
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [
                torch.stack([cos, -sin, shift[:, 0] * 2 / width], dim=1),
                torch.stack([sin, cos, shift[:, 1] * 2 / height], dim=1),
            ],
            dim=1,
        )
        images = torch.as_tensor(x[chunk_rows])
        grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
        warped = functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out_x[len(x) + start : len(x) + start + n] = warped.clamp(0.0, 1.0).numpy()
    return out_x, out_y
