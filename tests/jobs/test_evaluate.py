import json

from jobs.evaluate import main


def test_evaluate_job_writes_every_metric_and_logs_to_mlflow(small_world, ray_local, mlflow_uri, tmp_path):
    import mlflow

    world, _ = small_world
    metrics = main([f"run.output_dir={tmp_path}", f"eval.split_dir={world}", "run.name=evaltest"])
    for key in ("t2i_r@1", "t2i_r@5", "i2t_r@10", "modality_gap", "w1_matched_unmatched", "comp_all_accuracy",
                "comp_held_out_accuracy", "comp_all_swap_attributes_group"):
        assert key in metrics, key
    assert 0.0 <= metrics["t2i_r@1"] <= metrics["t2i_r@5"] <= metrics["t2i_r@10"] <= 1.0
    written = json.loads((tmp_path / "eval" / "untrained" / "metrics.json").read_text())
    assert written == metrics
    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["maple"], filter_string="tags.`maple.job` = 'evaluate'")
    assert len(runs) >= 1 and "metrics.t2i_r_at_1" in runs.columns
