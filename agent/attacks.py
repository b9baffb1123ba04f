"""Gradient attacks used to measure credibility on adversarial inputs (not a defence library)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def fgsm(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epsilon: float,
    value_range: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 512,
) -> np.ndarray:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one L∞ step of size ε up the loss."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    out = np.empty_like(x, dtype=np.float32)
    for start in range(0, len(x), batch_size):
        batch = torch.as_tensor(np.asarray(x[start : start + batch_size], dtype=np.float32)).requires_grad_(True)
        labels = torch.as_tensor(y[start : start + batch_size], dtype=torch.long)
        loss = loss_fn(model(batch), labels)
        (gradient,) = torch.autograd.grad(loss, batch)
        adversarial = (batch + epsilon * gradient.sign()).clamp(*value_range)
        out[start : start + len(batch)] = adversarial.detach().numpy()
    return out
