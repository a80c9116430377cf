"""Ablation reports: metrics of several variants over several seeds → mean ± std tables (plots: `maple.eval.plots`).

Pure functions over the evaluation job's metric dicts (no numbers are made here, only aggregated).
"""

from __future__ import annotations

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


def text_table(summary: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    """The ablation for a terminal: recall@1/5 both ways and held-out fine-grained accuracy per variant (×100, mean ±
    std over seeds), aligned in columns that fit 100 characters; `markdown_table` has every column."""
    header = ["variant", *TABLE_METRICS, "fine-grained"]
    rows = [[variant, *[_cell(stats.get(k)) for k in TABLE_METRICS], _cell(stats.get("fine_grained"))]
            for variant, stats in summary.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in [header, *rows])
