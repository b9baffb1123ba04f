"""Shifted versions of an evaluation set: what a monitor must flag."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from dknn_lab.attacks import fgsm, pgd
from dknn_lab.evalset import EvalSet as EvalSet


def uniform_noise(n: int, shape: tuple[int, ...], seed: int) -> EvalSet:
    x = np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, *shape)).astype(np.float32)
    return EvalSet("noise", x, None)


def rotated(clean: EvalSet) -> EvalSet:
    """Digits turned 90° counter-clockwise: still strokes, no longer the digits the model knows."""
    return EvalSet("rotated", np.ascontiguousarray(np.rot90(clean.x, k=1, axes=(-2, -1))), clean.y)


def turned(clean: EvalSet, degrees: float) -> EvalSet:
    """Images `(n, c, h, w)` turned `degrees` counter-clockwise about their centre (bilinear, zeros
    outside): a small turn keeps a digit readable to the model, a large one does not."""
    angle = np.deg2rad(degrees)
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    images = torch.from_numpy(np.ascontiguousarray(clean.x, dtype=np.float32))
    theta = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0]]).expand(len(images), 2, 3)
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    x = functional.grid_sample(images, grid, align_corners=False).numpy()
    return EvalSet(f"turned {degrees:g}°", np.ascontiguousarray(x), clean.y)


def fgsm_set(model: nn.Module, clean: EvalSet, epsilon: float) -> EvalSet:
    assert clean.y is not None
    return EvalSet("fgsm", fgsm(model, clean.x, clean.y, epsilon), clean.y)


def gaussian_noise(n: int, shape: tuple[int, ...], seed: int) -> EvalSet:
    """N(0.5, 0.25²) per pixel, clipped to [0, 1]: smoother than uniform noise, same support."""
    x = np.random.default_rng(seed + 1).normal(0.5, 0.25, size=(n, *shape)).clip(0.0, 1.0).astype(np.float32)
    return EvalSet("gaussian", x, None)


def inverted(clean: EvalSet) -> EvalSet:
    """White digits on black become black on white: the same shapes, a foreign intensity profile."""
    return EvalSet("inverted", np.ascontiguousarray(1.0 - clean.x), clean.y)


def iterative_attack_sets(model: nn.Module, clean: EvalSet, epsilon: float, seed: int) -> list[EvalSet]:
    """BIM (10 steps of ε/4, no random start) and PGD (20 steps of ε/8 from a random start)."""
    assert clean.y is not None
    return [
        EvalSet("bim", pgd(model, clean.x, clean.y, epsilon, epsilon / 4, steps=10, random_start=False), clean.y),
        EvalSet(
            "pgd", pgd(model, clean.x, clean.y, epsilon, epsilon / 8, steps=20, random_start=True, seed=seed), clean.y
        ),
    ]


def shifted_sets(model: nn.Module, clean: EvalSet, epsilon: float, seed: int) -> list[EvalSet]:
    return [
        uniform_noise(len(clean.x), clean.x.shape[1:], seed),
        rotated(clean),
        fgsm_set(model, clean, epsilon),
    ]


# --- sharpness: the same writers, less detail (issue #10's covariate-shift collapse) -----------


def blurred(clean: EvalSet, sigma: float) -> EvalSet:
    """Each digit under a Gaussian blur of `sigma` pixels, peak ink rescaled to MNIST's 1.0."""
    from scipy.ndimage import gaussian_filter  # scikit-learn's dependency, in the lab extra

    x = gaussian_filter(clean.x, sigma=(0, 0, sigma, sigma)).astype(np.float32)
    peak = x.max(axis=(-2, -1), keepdims=True)
    return EvalSet(f"blur σ={sigma:g}", np.where(peak > 0, x / np.maximum(peak, 1e-12), x), clean.y)


def through_resolution(clean: EvalSet, side: int) -> EvalSet:
    """Each digit's ink box squared, averaged down to `side`×`side` pixels, then framed again by
    `mnist_frame`: the path scikit-learn's 8×8 digits take into the model, applied to MNIST."""
    from PIL import Image

    from dknn_lab.natural_sets import crop_to_ink, mnist_frame

    def degrade(image: np.ndarray) -> np.ndarray:
        ink = crop_to_ink(image)
        height, width = ink.shape
        square = np.zeros((max(height, width),) * 2, dtype=np.float32)
        top, left = (len(square) - height) // 2, (len(square) - width) // 2
        square[top : top + height, left : left + width] = ink
        small = np.asarray(Image.fromarray(square).resize((side, side), Image.Resampling.BOX))
        return mnist_frame(small)

    x = np.stack([degrade(image[0]) for image in clean.x])[:, None]
    return EvalSet(f"through {side}×{side}", x, clean.y)


def thickened(clean: EvalSet) -> EvalSet:
    """Strokes one pixel thicker (a 2×2 grey dilation): more ink at the same sharpness."""
    from scipy.ndimage import grey_dilation

    return EvalSet("thicker strokes", grey_dilation(clean.x, size=(1, 1, 2, 2)).astype(np.float32), clean.y)
