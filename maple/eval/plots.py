"""Plots of the reports (matplotlib, written to PNG files): accuracy per negative type, similarity histograms,
training curves, the judge-noise sweep and the judge's score histogram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_type_accuracy(summary: dict[str, dict[str, tuple[float, float, int]]], negative_types: list[str],
                       path: Path, subset: str = "held_out") -> None:
    """Grouped bars: accuracy per negative type for each variant, error bars = std over seeds."""
    variants = list(summary)
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(negative_types)), 4))
    for i, variant in enumerate(variants):
        stats = [summary[variant].get(f"comp_{subset}_{t}_accuracy", (np.nan, 0.0, 0)) for t in negative_types]
        x = np.arange(len(negative_types)) + i * width
        ax.bar(x, [s[0] for s in stats], width, yerr=[s[1] for s in stats], label=variant, capsize=2)
    ax.set_xticks(np.arange(len(negative_types)) + width * (len(variants) - 1) / 2, negative_types, rotation=20)
    ax.set_ylabel(f"accuracy ({subset.replace('_', '-')} combinations)")
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_similarity_histograms(similarities: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """Per variant: histograms of matched vs unmatched image-text similarities (the modality gap made visible)."""
    n = len(similarities)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 2.6), sharey=False, squeeze=False)
    for ax, (variant, sims) in zip(axes[0], similarities.items()):
        ax.hist(sims["unmatched"], bins=40, density=True, alpha=0.6, label="unmatched")
        ax.hist(sims["matched"], bins=40, density=True, alpha=0.6, label="matched")
        ax.set_title(variant, fontsize=8)
        ax.set_xlabel("cosine similarity", fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, ylabel: str) -> None:
    """Training curves: variant -> [(step, value)]."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for variant, points in curves.items():
        if points:
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, label=variant, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_noise_sweep(points: list[tuple[float, float, float]], path: Path, xlabel: str) -> None:
    """Gain of the full method over InfoNCE (mean, std) as the judge gets noisier."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs, means, stds = zip(*points) if points else ((), (), ())
    ax.errorbar(xs, np.array(means) * 100, yerr=np.array(stds) * 100, marker="o", capsize=3)
    ax.axhline(0, color="grey", lw=0.5, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fine-grained accuracy gain (points)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_score_histogram(scores: dict[str, np.ndarray] | np.ndarray, path: Path, bins: int = 20) -> list[int]:
    """The judge's P(Yes) over every judged pair, one histogram per source (e.g. positives, retrieved, rewritten),
    NaN skipped; returns the bin counts over [0, 1] summed over the sources."""
    by_source = scores if isinstance(scores, dict) else {"all": scores}
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = np.zeros(bins, dtype=int)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for source, values in by_source.items():
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        counts, _ = np.histogram(values, bins=edges)
        total += counts
        if len(values):
            ax.hist(values, bins=edges, alpha=0.55, label=f"{source} ({len(values)})")
    ax.set_xlabel("judge P(Yes)")
    ax.set_ylabel("pairs")
    ax.set_title(f"judge scores, {int(total.sum())} pairs", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return total.tolist()
