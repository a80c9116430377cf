"""Ablation reports: metrics of several variants over several seeds → mean ± std tables and plots.

Pure functions over the evaluation job's metric dicts (no numbers are made here, only aggregated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TABLE_METRICS = ("t2i_r@1", "t2i_r@5", "i2t_r@1", "i2t_r@5")
FINE_GRAINED_TYPES = ("replace_attribute", "swap_attributes", "replace_relation", "swap_relation_order")


def aggregate(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """variant -> list of per-seed metric dicts  ==>  variant -> metric -> (mean, std, n). Std is the sample std
    (ddof=1) when there are at least two seeds, else 0."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for variant, seeds in runs.items():
        keys = sorted(set().union(*[m.keys() for m in seeds])) if seeds else []
        out[variant] = {}
        for key in keys:
            values = np.array([m[key] for m in seeds if key in m and np.isfinite(m[key])], dtype=float)
            if len(values):
                std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                out[variant][key] = (float(values.mean()), std, len(values))
    return out


def fine_grained_accuracy(metrics: dict[str, float], subset: str = "held_out") -> float:
    """Mean accuracy over the swap/replace negative types on `subset` ("all" or "held_out") combinations."""
    values = [metrics[f"comp_{subset}_{t}_accuracy"] for t in FINE_GRAINED_TYPES
              if f"comp_{subset}_{t}_accuracy" in metrics]
    return float(np.mean(values)) if values else float("nan")


def _cell(stat: tuple[float, float, int] | None, scale: float = 100.0) -> str:
    if stat is None:
        return "–"
    mean, std, _ = stat
    return f"{mean * scale:.1f} ± {std * scale:.1f}"


def markdown_table(summary: dict[str, dict[str, tuple[float, float, int]]], negative_types: list[str],
                   subset: str = "held_out") -> str:
    """Recall@1/5 both ways and compositional accuracy per negative type (×100, mean ± std over seeds)."""
    comp_keys = [f"comp_{subset}_{t}_accuracy" for t in negative_types]
    header = ["variant", "seeds", *TABLE_METRICS, "fine-grained", *negative_types]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, stats in summary.items():
        n = max((s[2] for s in stats.values()), default=0)
        row = [variant, str(n), *[_cell(stats.get(k)) for k in TABLE_METRICS], _cell(stats.get("fine_grained")),
               *[_cell(stats.get(k)) for k in comp_keys]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_type_accuracy(summary: dict[str, dict[str, tuple[float, float, int]]], negative_types: list[str],
                       path: Path, subset: str = "held_out") -> None:
    """Grouped bars: accuracy per negative type for each variant, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs, means, stds = zip(*points) if points else ((), (), ())
    ax.errorbar(xs, np.array(means) * 100, yerr=np.array(stds) * 100, marker="o", capsize=3)
    ax.axhline(0, color="grey", lw=0.5, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fine-grained accuracy gain (points)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
