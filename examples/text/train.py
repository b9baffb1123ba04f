"""A team's own sequence classifier on token ids, as it would onboard: plain torch, nothing of dknn-agent.

The text is generated deterministically: four "languages", each a first-order Markov chain over a
59-token vocabulary (token 0 pads), drawn from a seeded Dirichlet, in sequences of 8 to 24 tokens.
The model reads two named inputs, `input_ids` and `attention_mask` (int64, as Hugging Face
tokenizers give them), embeds the tokens, runs a GRU (whose output is a tuple, (outputs, h_n)),
averages its outputs over the real tokens and returns a dict, `{"logits": ..., "pooled": ...}`.
Writes to --out:

    model.pt2                 the model, exported with torch.export (a dynamic batch dimension)
    train.npz                 input_ids, attention_mask and y for fit
    calibration.npz           held out from training, for fit's calibration
    test.npz                  held out from both, for evaluate
    ood/random-tokens.npz     uniformly random tokens: no language at all
    ood/unseen-language.npz   a fifth chain the model never saw
    vocabulary.txt            the tokens, one per line (line i is token id i), as a tokenizer's vocab.txt

    python examples/text/train.py --out work/text
    dknn-agent fit --model work/text/model.pt2 --train work/text/train.npz \
        --calibration work/text/calibration.npz --output logits --vocabulary work/text/vocabulary.txt \
        --out work/text/bundle
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

VOCABULARY = 60  # ids 1..59; 0 pads
LENGTH = 24
LANGUAGES = 4


class GruClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 32, padding_idx=0)
        self.gru = nn.GRU(32, 64, batch_first=True)
        self.head = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.classifier = nn.Linear(64, LANGUAGES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).float()
        outputs, _ = self.gru(self.embedding(input_ids))
        pooled = (outputs * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        return {"logits": self.classifier(self.head(pooled)), "pooled": pooled}


def chain(rng: np.random.Generator) -> np.ndarray:
    """A language: where each token goes next (sparse rows, so languages differ)."""
    return rng.dirichlet(np.full(VOCABULARY - 1, 0.1), size=VOCABULARY - 1)


def sentences(transitions: np.ndarray | None, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` padded sequences from a chain (uniform tokens where `transitions` is None) and their masks."""
    ids = np.zeros((count, LENGTH), dtype=np.int64)
    mask = np.zeros((count, LENGTH), dtype=np.int64)
    for row in range(count):
        length = int(rng.integers(8, LENGTH + 1))
        token = int(rng.integers(VOCABULARY - 1))
        for position in range(length):
            ids[row, position] = token + 1
            token = (
                int(rng.integers(VOCABULARY - 1))
                if transitions is None
                else int(rng.choice(VOCABULARY - 1, p=transitions[token]))
            )
        mask[row, :length] = 1
    return ids, mask


def vocabulary() -> list[str]:
    """A made-up word per id (two syllables: ka, ko, ..., zu), so that a sequence reads as text; id 0 pads."""
    syllables = [consonant + vowel for consonant in "kmnprstz" for vowel in "aeiou"]
    n = len(syllables)
    return ["[PAD]"] + [syllables[i % n] + syllables[(3 * i + 17 * (i // n)) % n] for i in range(1, VOCABULARY)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-language", type=int, default=1500, help="training sequences per language")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    languages = [chain(np.random.default_rng([args.seed, 1, index])) for index in range(LANGUAGES + 1)]
    rng = np.random.default_rng([args.seed, 2])

    def split(per_language: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [sentences(languages[index], per_language, rng) for index in range(LANGUAGES)]
        ids = np.concatenate([part[0] for part in parts])
        mask = np.concatenate([part[1] for part in parts])
        return ids, mask, np.repeat(np.arange(LANGUAGES), per_language)

    train, calibration, test = split(args.per_language), split(100), split(150)
    model = GruClassifier()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    ids, mask, labels = (torch.as_tensor(array) for array in train)
    model.train()
    for _ in range(args.epochs):
        for batch in torch.randperm(len(ids)).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(ids[batch], mask[batch])["logits"], labels[batch]).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.as_tensor(test[0]), torch.as_tensor(test[1]))["logits"].argmax(1).numpy()
    print(f"test accuracy {(predicted == test[2]).mean():.3f} on {len(test[2])} sequences")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood").mkdir(exist_ok=True)
    batch = torch.export.Dim("batch")
    example = (torch.as_tensor(train[0][:2]), torch.as_tensor(train[1][:2]))
    exported = torch.export.export(model, example, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(exported, args.out / "model.pt2")
    for name, (split_ids, split_mask, split_labels) in (("train", train), ("calibration", calibration), ("test", test)):
        np.savez(args.out / f"{name}.npz", input_ids=split_ids, attention_mask=split_mask, y=split_labels)
    for name, transitions in (("random-tokens", None), ("unseen-language", languages[LANGUAGES])):
        ood_ids, ood_mask = sentences(transitions, 600, rng)
        np.savez(args.out / "ood" / f"{name}.npz", input_ids=ood_ids, attention_mask=ood_mask)
    (args.out / "vocabulary.txt").write_text("".join(token + "\n" for token in vocabulary()), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
