"""A team's own image classifier, as it would onboard: a small ResNet in plain torch, nothing of dknn-agent.

Residual blocks in torchvision's style call one `relu` module twice (after the first convolution
and after the shortcut is added), so the agent must tell `layer2.1.relu` from `layer2.1.relu#1`.
Trained on MNIST (the IDX files in ../shared/data/mnist, or $DKNN_MNIST_DIR). Writes to --out:

    model.pt2        the model, exported with torch.export (a dynamic batch dimension)
    train.npz        x (float32, N x 1 x 28 x 28 in [0, 1]) and y for fit
    calibration.npz  held out from training (MNIST test digits), for fit's calibration
    test.npz         other MNIST test digits, for evaluate
    ood/noise.npy    uniform noise
    ood/rotated.npy  test digits turned 90°: strokes, but no digit the model knows
    ood/photos.npy   grey 28 x 28 crops of the two photographs scikit-learn ships (natural images)

    python examples/resnet/train.py --out work/resnet
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_sample_images
from torch import nn

MNIST = Path(os.environ.get("DKNN_MNIST_DIR", Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"))


class Block(nn.Module):
    """conv-relu-conv, plus the shortcut, then the same relu again (no batch norm: a small model
    trained for a few epochs learns faster without it)."""

    def __init__(self, channels_in: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.relu = nn.ReLU()
        self.shortcut = (
            nn.Conv2d(channels_in, channels, 1, stride) if stride != 1 or channels_in != channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU())  # 14 x 14
        self.layer1 = nn.Sequential(Block(32, 32), Block(32, 32))
        self.layer2 = nn.Sequential(Block(32, 64, stride=2), Block(64, 64))  # 7 x 7
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def idx(name: str) -> np.ndarray:
    with gzip.open(MNIST / name) as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def photo_patches(count: int, rng: np.random.Generator) -> np.ndarray:
    grey = [image.mean(axis=2) / 255.0 for image in load_sample_images().images]
    patches = []
    for _ in range(count):
        image = grey[rng.integers(len(grey))]
        size = int(rng.integers(28, 112))
        top, left = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
        crop = torch.as_tensor(image[top : top + size, left : left + size], dtype=torch.float32)[None, None]
        patches.append(nn.functional.interpolate(crop, size=(28, 28), mode="area")[0].numpy())
    return np.stack(patches).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-size", type=int, default=60_000, help="MNIST training images used (default: all)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    x_train = (idx("train-images-idx3-ubyte.gz") / 255.0).astype(np.float32)[:, None]
    y_train = idx("train-labels-idx1-ubyte.gz").astype(np.int64)
    x_test = (idx("t10k-images-idx3-ubyte.gz") / 255.0).astype(np.float32)[:, None]
    y_test = idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    chosen = rng.choice(len(x_train), size=min(args.train_size, len(x_train)), replace=False)
    x_train, y_train = x_train[chosen], y_train[chosen]
    test_rows = rng.permutation(len(x_test))
    calibration, test = test_rows[:1000], test_rows[1000:3000]

    model = SmallResNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    images, labels = torch.as_tensor(x_train), torch.as_tensor(y_train)
    steps = args.epochs * -(-len(images) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(args.epochs):
        for batch in torch.randperm(len(images)).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimiser.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.as_tensor(x_test[test])).argmax(1).numpy() == y_test[test]).mean()
    print(f"test accuracy {accuracy:.3f} on {len(test)} MNIST test digits")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood").mkdir(exist_ok=True)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    torch.export.save(exported, args.out / "model.pt2")
    np.savez(args.out / "train.npz", x=x_train, y=y_train)
    np.savez(args.out / "calibration.npz", x=x_test[calibration], y=y_test[calibration])
    np.savez(args.out / "test.npz", x=x_test[test], y=y_test[test])
    np.save(args.out / "ood" / "noise.npy", rng.uniform(0.0, 1.0, size=(1000, 1, 28, 28)).astype(np.float32))
    np.save(args.out / "ood" / "rotated.npy", np.ascontiguousarray(np.rot90(x_test[test[:1000]], k=1, axes=(-2, -1))))
    np.save(args.out / "ood" / "photos.npy", photo_patches(1000, rng))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
