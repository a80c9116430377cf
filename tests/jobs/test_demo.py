"""The main job at a tiny size: every stage runs and the report holds every variant."""

import json

from jobs.demo import VARIANTS, main


def test_tiny_demo_runs_end_to_end_and_reports_every_variant(ray_local, mlflow_uri, tmp_path):
    metrics = main(["--config", "configs/demo_tiny.yaml", f"run.output_dir={tmp_path}"])
    report = (tmp_path / "report" / "report.md").read_text()
    for variant in [*VARIANTS, "full+reranker", "baseline"]:
        assert f"| {variant} |" in report, variant
    for plot in ("type_accuracy.png", "similarity_histograms.png", "training_loss.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 1000, plot
    # every number in the report comes from the evaluation job's files
    written = json.loads((tmp_path / "eval" / "full-s0" / "metrics.json").read_text())
    assert written["t2i_r@1"] == metrics["full-s0"]["t2i_r@1"]
    assert 0.0 <= metrics["full+reranker-s0"]["t2i_r@1"] <= 1.0
