"""bench/tower_capacity.py at a tiny size, so the script behind docs/demo.md's capacity table cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the benchmark script as a process

REPO = Path(__file__).resolve().parents[2]


def test_tiny_run_reports_every_kind_seen_and_new(tmp_path):
    out = tmp_path / "capacity.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "tower_capacity.py"), "--sizes", "32x1",
                           "--steps", "3", "--n-train", "40", "--n-eval", "30", "--batch", "16", "--threads", "1",
                           "--probe-n", "100", "--references", "--supervised", "--supervised-steps", "2",
                           "--out", str(out)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (key, row), = json.loads(out.read_text())["runs"].items()
    assert key.startswith("32x1/p8/e64/3steps/n40/")
    for split in ("seen", "new"):
        assert set(row[split]) == {"replace_attribute", "swap_attributes", "replace_relation",
                                   "swap_relation_order"}
        assert all(0 <= v <= 100 for v in row[split].values())
    assert row["final_loss"] > 0
    for stage in ("untrained", "trained"):
        assert set(row["probe"][stage]) == {"image", "text"}
        assert all(0 <= v <= 100 for v in row["probe"][stage].values())
    results = json.loads(out.read_text())
    (learnt,) = results["supervised_binding"].values()
    assert set(learnt) == {"image", "text"} and all(0 <= v <= 100 for v in learnt.values())
    references = results["reference_probes"]
    assert set(references["raw pixels 16x16"]) == {"image"} and set(references[
        "all-MiniLM-L6-v2 (pretrained, frozen)"]) == {"text"}


def test_binding_rows_label_the_upper_objects_colour_and_caption_the_scene_truly():
    from maple.data.config import WorldConfig
    from maple.data.synth import reference_score

    tower_capacity = _bench_module()
    for scene, caption, label in tower_capacity.binding_rows(200, 3, WorldConfig()):
        upper, lower = sorted(scene.objects, key=lambda o: o.row)
        assert upper.row < lower.row and label == int(upper.colour < lower.colour)
        assert reference_score(caption, scene) == 1.0, caption  # the caption is true of its scene


def test_linear_probe_matches_a_reference_fit_and_is_at_chance_on_noise():
    import torch

    tower_capacity = _bench_module()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=generator)
    y = (x[:, 0] - 0.5 * x[:, 3] > 0).long()  # linearly separable
    assert tower_capacity.linear_probe(x[:400], y[:400], x[400:], y[400:]) >= 97
    noise = torch.randint(0, 2, (600,), generator=generator)
    assert 35 <= tower_capacity.linear_probe(x[:400], noise[:400], x[400:], noise[400:]) <= 65
    # the same fit by plain gradient descent on the same objective (an independent optimiser) agrees on test labels
    mean, std = x[:400].mean(0), x[:400].std(0) + 1e-6
    z, weight = (x - mean) / std, torch.zeros(9, requires_grad=True)
    optimiser = torch.optim.Adam([weight], lr=0.05)
    for _ in range(2000):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:400] @ weight[:-1] + weight[-1], y[:400].float())
        (loss + 1e-3 * weight[:-1].square().sum()).backward()
        optimiser.step()
    reference = 100 * ((z[400:] @ weight[:-1] + weight[-1] > 0).long() == y[400:]).float().mean().item()
    assert abs(tower_capacity.linear_probe(x[:400], y[:400], x[400:], y[400:]) - reference) <= 1.0


def _bench_module():
    import importlib

    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module("tower_capacity")
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_two_object_scenes_run_under_their_own_key(tmp_path):
    out = tmp_path / "capacity.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "tower_capacity.py"), "--sizes", "32x1",
                           "--steps", "2", "--n-train", "30", "--n-eval", "20", "--batch", "8", "--threads", "1",
                           "--kinds", "swap_relation_order", "--max-objects", "2", "--out", str(out)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (key, row), = json.loads(out.read_text())["runs"].items()
    assert key.endswith("/swap_relation_order/s0/max2objects") and set(row["new"]) == {"swap_relation_order"}


def test_unknown_kind_is_refused(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "tower_capacity.py"), "--kinds", "colour_swap",
                           "--out", str(tmp_path / "x.json")],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown kinds ['colour_swap']" in done.stderr


def test_a_curriculum_runs_its_stages_in_order_and_scores_each(tmp_path):
    tower_capacity = _bench_module()
    assert tower_capacity.parse_curriculum("2:above+below:400/3:all:100") == [(2, ("above", "below"), 400),
                                                                                (3, None, 100)]
    out = tmp_path / "capacity.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "tower_capacity.py"), "--sizes", "32x1",
                           "--n-train", "30", "--n-eval", "20", "--batch", "8", "--threads", "1", "--probe-n", "100",
                           "--kinds", "replace_relation,swap_relation_order", "--curriculum", "2:above+below:2/3:all:1",
                           "--out", str(out)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (key, row), = json.loads(out.read_text())["runs"].items()
    assert "/curriculum[2:above+below:2/3:all:1]/n30/" in key
    assert len(row["new_after_each_stage"]) == len(row["stage_world_new"]) == 2
    assert row["new"] == row["new_after_each_stage"][-1]
    assert set(row["stage_world_new"][0]) == {"replace_relation", "swap_relation_order"}
