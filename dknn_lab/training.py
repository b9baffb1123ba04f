"""Supervised training of a reference classifier, seeded and with a progress bar."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from agent.engine.taps import LayerCapture
from dknn_lab.snnl import Distance, SoftNearestNeighborLoss


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    shift_px: int = 0  # random translation of up to this many pixels per image (data augmentation)
    # Gaussian blur of σ drawn uniformly from [0, blur_sigma] pixels per image (data augmentation;
    # 0 = off). SNNL-trained models lean on crisp stroke edges and fail on soft digits (bench sharpness).
    blur_sigma: float = 0.0
    # Soft nearest-neighbour loss (Frosst et al. 2019): total = CE − snnl_weight × Σ_layers SNNL, so a
    # positive weight entangles the classes in those hidden layers. The temperature is fixed unless
    # snnl_learn_temperature, which makes it follow argmin_T SNNL batch by batch (dknn_lab.snnl) — note
    # that on well-separated classes that minimiser runs to T → 0, where SNNL and its gradient vanish.
    snnl_weight: float = 0.0
    snnl_temperature: float = 100.0
    snnl_learn_temperature: bool = False
    # Cosine distance is scale invariant, so with a fixed temperature the network cannot raise the
    # SNNL just by shrinking its activations (with squared Euclidean distance it can: D/T scales as s²).
    snnl_distance: Distance = "euclidean"
    snnl_layers: tuple[str, ...] = ()
    progress: bool = True


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, options: TrainOptions) -> nn.Module:
    """Adam on cross-entropy with a cosine learning-rate decay; deterministic for a seed on one machine."""
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    inputs, labels = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long)
    optimiser = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    steps_per_epoch = -(-len(inputs) // options.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=options.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    snnl = _SnnlTerm(model, options) if options.snnl_weight and options.snnl_layers else None
    model.train()
    for epoch in range(options.epochs):
        order = torch.as_tensor(rng.permutation(len(inputs)))
        steps = range(0, len(order), options.batch_size)
        bar = tqdm(steps, desc=f"epoch {epoch + 1}/{options.epochs}", unit="batch", disable=not options.progress)
        for start in bar:
            rows = order[start : start + options.batch_size]
            optimiser.zero_grad(set_to_none=True)
            batch = random_shift(inputs[rows], options.shift_px) if options.shift_px else inputs[rows]
            batch = random_blur(batch, options.blur_sigma) if options.blur_sigma else batch
            loss = loss_fn(model(batch), labels[rows])
            if snnl is not None:
                loss = loss - options.snnl_weight * snnl.total(labels[rows])
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    if snnl is not None:
        snnl.close()
    return model.eval()


class _SnnlTerm:
    """Captures the chosen layers' activations (with gradients) and sums their SNNL per batch."""

    def __init__(self, model: nn.Module, options: TrainOptions) -> None:
        self.capture = LayerCapture(model, options.snnl_layers)
        self.losses = {
            name: SoftNearestNeighborLoss(
                options.snnl_temperature,
                learn_temperature=options.snnl_learn_temperature,
                distance=options.snnl_distance,
            )
            for name in options.snnl_layers
        }

    def total(self, labels: torch.Tensor) -> torch.Tensor:
        return sum(loss(self.capture.outputs[name].flatten(1), labels) for name, loss in self.losses.items())

    def close(self) -> None:
        self.capture.close()


def random_shift(images: torch.Tensor, max_px: int) -> torch.Tensor:
    """Translates each image of `(B, C, H, W)` by up to `max_px` pixels, filling with zeros."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_px, max_px, max_px, max_px))
    dy = torch.randint(0, 2 * max_px + 1, (b, 1, 1))
    dx = torch.randint(0, 2 * max_px + 1, (b, 1, 1))
    rows = dy + torch.arange(h).view(1, h, 1)
    cols = dx + torch.arange(w).view(1, 1, w)
    return padded[torch.arange(b).view(b, 1, 1), :, rows, cols].permute(0, 3, 1, 2)


def random_blur(images: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Blurs each image of `(B, 1, H, W)` with its own Gaussian of σ ~ U(0, max_sigma) pixels (one
    separable pass, grouped by image) and rescales it to its own peak, as blurred test digits are
    rescaled (`bench.perturbations.blurred`)."""
    b, c, h, w = images.shape
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    sigma = torch.rand(b, 1, dtype=images.dtype) * max_sigma
    kernel = torch.exp(-0.5 * (offsets / sigma.clamp_min(1e-3)) ** 2)  # σ near 0: a delta
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    flat = images.reshape(1, b * c, h, w)
    flat = torch.nn.functional.conv2d(flat, kernel.view(b * c, 1, 1, -1), padding=(0, radius), groups=b * c)
    flat = torch.nn.functional.conv2d(flat, kernel.view(b * c, 1, -1, 1), padding=(radius, 0), groups=b * c)
    blurred = flat.reshape(b, c, h, w)
    peak_before = images.amax(dim=(-2, -1), keepdim=True)
    peak_after = blurred.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return blurred * (peak_before / peak_after)
