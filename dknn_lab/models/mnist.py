"""The MNIST CNN of the DkNN paper (Papernot & McDaniel 2018, after the cleverhans basic CNN).

conv 64@8x8 stride 2 (same padding) -> ReLU -> conv 128@6x6 stride 2 -> ReLU -> conv 128@5x5 -> ReLU
-> linear to 10 classes. Named submodules so DkNN layers can be addressed by `named_modules()` path:
`relu1` (64x14x14), `relu2` (128x5x5), `relu3` (128), `logits` (10).
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 28, 28)
DKNN_LAYERS = ("relu1", "relu2", "relu3", "logits")


class MnistCnn(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, kernel_size=8, stride=2, padding=3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(64, 128, kernel_size=6, stride=2)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(128, 128, kernel_size=5)
        self.relu3 = nn.ReLU()
        self.logits = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = self.relu3(self.conv3(x))
        return self.logits(torch.flatten(x, 1))


def build_model(num_classes: int = 10) -> MnistCnn:
    """Factory named in bundle manifests as `dknn_lab.models.mnist:build_model`."""
    return MnistCnn(num_classes=num_classes)
