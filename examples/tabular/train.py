"""A team's own tabular classifier, as it would onboard: plain torch and scikit-learn, nothing of dknn-agent.

An MLP on scikit-learn's 8x8 handwritten digits read as 64 features (1,797 rows that ship with
scikit-learn), trained on the digits 0-7. What it writes to --out:

    model.pt2            the model, exported with torch.export (a dynamic batch dimension)
    train.npz            x (float32, 64 features) and y for fit
    calibration.npz      held out from training, for fit's calibration
    test.npz             held out from both, for evaluate
    ood/noise.npy        uniform noise over the features' range
    ood/unseen-digits.npy the digits 8 and 9, which the model never saw: a natural out-of-distribution set

    python examples/tabular/train.py --out work/tabular
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

KNOWN = 8  # classes 0..7 are trained; 8 and 9 are held back as unseen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel intensities 0..16 as features in [0, 1]
    known, unseen = np.flatnonzero(y < KNOWN), np.flatnonzero(y >= KNOWN)
    rows = rng.permutation(known)
    train, calibration, test = rows[:850], rows[850:1150], rows[1150:]

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, KNOWN))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    features, labels = torch.as_tensor(x[train]), torch.as_tensor(y[train])
    for _ in range(args.epochs):
        for batch in torch.randperm(len(train)).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(features[batch]), labels[batch]).backward()
            optimiser.step()
    model.eval()
    accuracy = (model(torch.as_tensor(x[test])).argmax(1).numpy() == y[test]).mean()
    print(f"test accuracy {accuracy:.3f} on {len(test)} digits 0-{KNOWN - 1}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood").mkdir(exist_ok=True)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (torch.zeros(2, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(exported, args.out / "model.pt2")
    for name, chosen in (("train", train), ("calibration", calibration), ("test", test)):
        np.savez(args.out / f"{name}.npz", x=x[chosen], y=y[chosen])
    np.save(args.out / "ood" / "noise.npy", rng.uniform(0.0, 1.0, size=(500, 64)).astype(np.float32))
    np.save(args.out / "ood" / "unseen-digits.npy", x[unseen])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
