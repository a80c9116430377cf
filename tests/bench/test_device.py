"""bench/device.py --tiny runs the GPU benchmark's code paths on CPU, so the script cannot rot between GPU runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the benchmark script as a process

REPO = Path(__file__).resolve().parents[2]
TRAIN_METRICS = ("step_s", "samples_per_s", "peak_memory_gb", "tflops", "mfu")
JUDGE_METRICS = ("seconds", "pairs_per_s", "ratio_to_unshared_limit", "mfu_all_tokens")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("device")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "device.py"), "--tiny", "--device", "cpu",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_train_section_times_every_step_of_both_families(tiny_run):
    train = json.loads((tiny_run / "results.json").read_text())["train"]
    assert set(train) == {"clip", "siglip"}
    for section in train.values():
        assert {r["step"] for r in section["steps"]} == {"infonce", "maple", "infonce_hn"}
        for row in section["steps"]:
            assert all(positive(row[m]) for m in TRAIN_METRICS), row
        assert positive(section["train_gflops_per_pair_formula"]) and positive(section["train_gflops_per_pair_counted"])
        assert positive(section["full_loss_time_vs_infonce_hn"])


def test_judge_prefix_batched_scores_equal_the_per_pair_loop(tiny_run):
    judge = json.loads((tiny_run / "results.json").read_text())["judge"]
    assert {r["method"] for r in judge["methods"]} == {"naive_per_pair", "full_prompts_batched", "prefix_batched"}
    for row in judge["methods"]:
        assert all(positive(row[m]) for m in JUDGE_METRICS), row
    assert positive(judge["prefix_vs_naive"]) and positive(judge["unshared_limit_pairs_per_s"])
    assert judge["prefix_vs_naive_max_abs_diff"] < 1e-4  # fp32 on CPU: sharing the prefix changes no score


def test_embedder_section_covers_texts_and_images_at_each_batch(tiny_run):
    embedder = json.loads((tiny_run / "results.json").read_text())["embedder"]
    assert {(r["modality"], r["batch"]) for r in embedder["rows"]} == {
        (m, b) for m in ("text", "image") for b in (1, 32, 256)}
    for row in embedder["rows"]:
        assert positive(row["inputs_per_s"]) and positive(row["latency_ms"]), row
    assert all(positive(v) for v in embedder["speedup_256_vs_1"].values())


def test_device_goals_and_markdown_table_are_written(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    assert positive(results["device"]["peak_tflops"]) and results["tiny"] is True
    assert len(results["goals"]) == 7 and all(positive(g["value"]) for g in results["goals"])
    table = (tiny_run / "results.md").read_text()
    for header in ("| model | step | batch |", "| method | pairs/s |", "| input | batch |", "| goal | value |"):
        assert header in table
    assert table.count("| clip |") == 3 and table.count("| siglip |") == 3
