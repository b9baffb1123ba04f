"""PNG figures for the quality benchmark: a reliability diagram and credibility histograms."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt
import numpy as np


def reliability_diagram(credibility: np.ndarray, correct: np.ndarray, path: Path, title: str) -> None:
    """DkNN accuracy per credibility bin: credibility is not a probability of being right, but
    a well-behaved monitor should be more often right where it is more credible."""
    edges = np.linspace(0.0, 1.0, 11)
    bins = np.clip(np.digitize(credibility, edges) - 1, 0, 9)
    centres = (edges[:-1] + edges[1:]) / 2
    accuracy = np.array([correct[bins == b].mean() if (bins == b).any() else np.nan for b in range(10)])
    counts = np.bincount(bins, minlength=10)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar(centres, accuracy, width=0.09, color="tab:blue", label="DkNN accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="identity")
    for centre, acc, count in zip(centres, accuracy, counts, strict=True):
        if count:
            ax.annotate(str(count), (centre, np.nan_to_num(acc)), ha="center", va="bottom", fontsize=7)
    ax.set(xlabel="credibility", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.05), title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def credibility_histograms(by_set: dict[str, np.ndarray], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0.0, 1.0, 21).tolist()
    for name, credibility in by_set.items():
        ax.hist(credibility, bins=bins, histtype="step", density=True, linewidth=1.5, label=name)
    ax.set(xlabel="credibility", ylabel="density", title=title, yscale="log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
