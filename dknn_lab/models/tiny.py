"""A tiny MLP for tests and examples: scores in milliseconds, fits a bundle in a second."""

from __future__ import annotations

import torch
from torch import nn


class TinyMlp(nn.Module):
    def __init__(self, in_features: int = 8, hidden: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.logits = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.logits(x)


def build_model(in_features: int = 8, hidden: int = 16, num_classes: int = 3) -> TinyMlp:
    """Factory named in bundle manifests as `dknn_lab.models.tiny:build_model`."""
    return TinyMlp(in_features=in_features, hidden=hidden, num_classes=num_classes)
