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


def pgd(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epsilon: float,
    step_size: float | None = None,
    steps: int = 40,
    random_start: bool = True,
    seed: int = 0,
    value_range: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 512,
) -> np.ndarray:
    """L∞ projected gradient descent, untargeted: iterated sign-gradient steps up the cross-entropy.

    ``random_start=False`` is BIM / I-FGSM (Kurakin et al. 2017): start at x, ``steps`` steps of
    ``step_size`` each, projected back into the ε-ball around x and into ``value_range`` after each
    step. ``random_start=True`` is the PGD of Madry et al. (2018): the same iteration from a start drawn
    uniformly in the ε-ball, which avoids the gradient-masked point x itself and makes it a stronger
    first-order attack. ``step_size`` defaults to 2.5·ε/steps (Madry et al.'s choice: enough total
    travel to cross the ball and come back). With steps=1, step_size=ε and no random start it
    reproduces :func:`fgsm` exactly.

    The random start is drawn for the whole array from ``numpy.random.default_rng(seed)`` before
    batching, so the result does not depend on ``batch_size``. Inputs are assumed to lie in
    ``value_range``; every output is within ε of its input in L∞ and inside ``value_range``. The
    model is put in eval mode for the attack and returned to the mode it was in.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be ≥ 0, got {epsilon}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    step = 2.5 * epsilon / steps if step_size is None else float(step_size)
    low, high = value_range
    x = np.asarray(x, dtype=np.float32)
    start_points = x.copy()
    if random_start:
        noise = np.random.default_rng(seed).uniform(-epsilon, epsilon, size=x.shape).astype(np.float32)
        start_points = np.clip(x + noise, low, high)

    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    out = np.empty_like(x)
    try:
        for start in range(0, len(x), batch_size):
            original = torch.as_tensor(x[start : start + batch_size])
            lower = (original - epsilon).clamp_min(low)
            upper = (original + epsilon).clamp_max(high)
            labels = torch.as_tensor(np.asarray(y[start : start + batch_size]), dtype=torch.long)
            adversarial = torch.as_tensor(start_points[start : start + batch_size])
            for _ in range(steps):
                adversarial = adversarial.detach().requires_grad_(True)
                loss = loss_fn(model(adversarial), labels)
                (gradient,) = torch.autograd.grad(loss, adversarial)
                adversarial = torch.minimum(torch.maximum(adversarial + step * gradient.sign(), lower), upper)
            out[start : start + len(original)] = adversarial.detach().numpy()
    finally:
        model.train(was_training)
    return out
