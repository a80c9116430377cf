"""The main job at a tiny size: every stage runs, the report holds every variant, the same command gives the same
numbers, nothing the evaluation uses reaches the training rows, and the console shows the stages and the result
while the libraries' output goes to the run's log."""

import contextlib
import io
import json
import re

import pyarrow.parquet as pq
import pytest

from jobs.demo import VARIANTS, goal_statement, main
from maple.data.synth import Scene


@pytest.fixture(scope="module")
def demo_runs(ray_local, mlflow_uri, tmp_path_factory):
    """The tiny demo, run twice with the same command into two folders: (output folder, metrics, console text)."""
    runs = []
    for k in range(2):
        out = tmp_path_factory.mktemp(f"demo{k}")
        with contextlib.redirect_stdout(io.StringIO()) as console:
            metrics = main(["--config", "configs/demo_tiny.yaml", f"run.output_dir={out}", f"run.name=demo-tiny-{k}"])
        runs.append((out, metrics, console.getvalue()))
    return runs


def test_tiny_demo_runs_end_to_end_and_reports_every_variant(demo_runs):
    out, metrics, _ = demo_runs[0]
    report = (out / "report" / "report.md").read_text()
    for variant in [*VARIANTS, "full+reranker", "baseline"]:
        assert f"| {variant} |" in report, variant
    for plot in ("type_accuracy.png", "similarity_histograms.png", "training_loss.png", "judge_scores.png"):
        assert (out / "report" / plot).stat().st_size > 1000, plot
    # every number in the report comes from the evaluation job's files
    written = json.loads((out / "eval" / "full-s0" / "metrics.json").read_text())
    assert written["t2i_r@1"] == metrics["full-s0"]["t2i_r@1"]
    assert 0.0 <= metrics["full+reranker-s0"]["t2i_r@1"] <= 1.0
    # rewriting is on in the tiny recipe: rewritten candidates were judged and reached the preference rankings
    judged = pq.read_table(out / "mined" / "judged").to_pylist()
    sources = {s for row in judged for s in row["candidate_sources"]}
    assert "retrieved" in sources and any(s.startswith("rewrite:") for s in sources), sources


def test_the_curriculum_trains_each_variant_through_its_stages_in_order(demo_runs, mlflow_uri):
    """demo_tiny.yaml's curriculum: two-object above/below scenes (their own world, mined and judged), then the
    world; each variant's last stage starts from its first."""
    import mlflow

    out, _, _ = demo_runs[0]
    stage = out / "curriculum" / "stage0"
    rows = pq.read_table(stage / "world" / "train").to_pylist()
    assert rows and all(len(Scene.from_json(r["annotation"]).objects) == 2 for r in rows)
    captions = " ".join(c for r in rows for c in r["captions"])
    assert " above " in captions and "left of" not in captions and "right of" not in captions
    judged = pq.read_table(stage / "mined" / "judged").to_pylist()
    assert {r["query_id"] for r in judged} <= {r["id"] for r in rows}
    assert all("left of" not in t and "right of" not in t for r in judged for t in r["rewrite_texts"] or [])
    mlflow.set_tracking_uri(mlflow_uri)
    for variant in VARIANTS:
        first, last = out / "models" / f"{variant}-s0.stage0", out / "models" / f"{variant}-s0"
        assert (first / "maple_embedder.json").exists() and (last / "maple_embedder.json").exists()
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                    filter_string=f"tags.mlflow.runName = 'demo-tiny-0-{variant}-s0'")
        assert run.data.params["model.name_or_path"] == str(first), variant
        assert run.data.params["train.steps"] == "1"
    # only the variants' last stage is evaluated and reported
    assert not any(".stage" in name for name in json.loads((out / "report" / "metrics.json").read_text()))


def test_the_same_command_gives_the_same_numbers(demo_runs):
    (_, first, _), (_, second, _) = demo_runs
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def _pixels(blob):
    from maple.data.images import decode_image

    return decode_image(blob).tobytes()


def test_no_evaluation_image_or_pair_reaches_the_training_rows(demo_runs):
    out, _, _ = demo_runs[0]
    world = out / "world"
    eval_images, eval_pairs = set(), set()
    for row in pq.read_table(world / "compositional").to_pylist():
        for image in (row["image"], row["negative_image"]):
            if image is not None:
                eval_images.add(_pixels(image))
        eval_pairs |= {(_pixels(row["image"]), row["caption"]), (_pixels(row["image"]), row["negative_caption"])}
    for row in pq.read_table(world / "test").to_pylist():
        eval_images.add(_pixels(row["image"]))
        eval_pairs |= {(_pixels(row["image"]), caption) for caption in row["captions"]}

    tables = [out / "mined" / "judged", *sorted((out / "curriculum").glob("stage*/mined/judged"))]
    judged = [row for table in tables for row in pq.read_table(table).to_pylist()]
    assert len(tables) == 2 and judged
    # no training scene of any stage holds a held-out colour-shape combination
    held_out = {tuple(c) for c in json.loads((world / "world.json").read_text())["held_out_combinations"]}
    for train in (world / "train", *(out / "curriculum").glob("stage*/world/train")):
        for row in pq.read_table(train, columns=["annotation"]).to_pylist():
            assert not {(o.colour, o.shape) for o in Scene.from_json(row["annotation"]).objects} & held_out
    for row in judged:
        images = [row["query_image"], row["positive_image"], *(row["hard_negative_images"] or []),
                  *(row["ranking_images"] or [])]
        pixels = [_pixels(image) for image in images if image is not None]
        assert not set(pixels) & eval_images, row["id"]
        texts = [row["query_text"], row["positive_text"], *(row["hard_negative_texts"] or []),
                 *(row["ranking_texts"] or []), *(row["rewrite_texts"] or [])]
        assert not {(p, t) for p in pixels for t in texts if t is not None} & eval_pairs, row["id"]


def test_the_console_shows_the_stages_and_ends_with_the_table_and_where_to_look(demo_runs):
    out, _, console = demo_runs[0]
    lines = console.splitlines()
    assert [line.split("]")[0] + "]" for line in lines if line.startswith("[")] == [f"[{k}/6]" for k in range(1, 7)]
    assert len(lines) <= 50  # the tiny demo's whole console; the full recipe adds a line per run
    # nothing of the libraries: no logging record, Ray Data progress block, warning or progress bar
    noise = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR)\b|logging_progress|core_worker|[Ww]arning|it/s]|Loading")
    assert [line for line in lines if noise.search(line)] == []
    # the table, a row per variant, then the three places to look, last
    header = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    rows = [line.split()[0] for line in lines[header + 1:header + 9]]
    assert rows == ["baseline", *VARIANTS, "full+reranker"]
    assert lines[-3:] == [f"report:    {out / 'report' / 'report.md'}", f"plots:     {out / 'report'}/*.png",
                          lines[-1]] and lines[-1].startswith("MLflow UI: mlflow ui --backend-store-uri sqlite:///")
    # ...while the records of maple and the libraries are in the run's log
    log = (out / "logs" / "demo.log").read_text()
    assert "INFO maple.stages.mining: mining" in log and "WARNING mlflow" in log


def _summary(full_fg, base_fg, t2i_drop, seeds, std=0.01):
    def variant(fg, t2i):
        return {"fine_grained": (fg, std, seeds), "t2i_r@1": (t2i, std, seeds), "i2t_r@1": (0.7, std, seeds)}
    return {"infonce": variant(base_fg, 0.78), "full": variant(full_fg, 0.78 - t2i_drop)}


def test_the_goal_statement_holds_the_run_to_every_clause_of_the_goal():
    met = goal_statement(_summary(0.80, 0.64, 0.005, seeds=3))
    assert "+16.0 points (2 std = 2.0)" in met and met.strip().endswith("met.") and "NOT" not in met
    one_seed = goal_statement(_summary(0.80, 0.64, 0.005, seeds=1, std=0.0))
    assert "one seed: no spread" in one_seed and "NOT met" in one_seed  # a mean over >= 3 seeds is asked for
    assert "text→image -10.6" in (recall := goal_statement(_summary(0.90, 0.64, 0.106, seeds=3)))
    assert "NOT met" in recall
    assert "NOT met" in goal_statement(_summary(0.70, 0.64, 0.0, seeds=3))  # +6 < 10
    assert "NOT met" in goal_statement(_summary(0.75, 0.64, 0.0, seeds=3, std=0.06))  # +11 within 2 std = 12
    assert goal_statement({"infonce": {}}) == ""
