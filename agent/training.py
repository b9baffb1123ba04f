"""Supervised training of a reference classifier, seeded and with a progress bar."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
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
    model.train()
    for epoch in range(options.epochs):
        order = torch.as_tensor(rng.permutation(len(inputs)))
        steps = range(0, len(order), options.batch_size)
        bar = tqdm(steps, desc=f"epoch {epoch + 1}/{options.epochs}", unit="batch", disable=not options.progress)
        for start in bar:
            rows = order[start : start + options.batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs[rows]), labels[rows])
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(torch.as_tensor(x[start : start + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[start : start + batch_size]).sum())
    return correct / len(x)
