"""bench/serve_load.py at a tiny size, so the script behind docs/benchmarks/serving.md cannot rot: workloads served,
their ceilings, the latency split and the CPU per process, and the docs table it writes. Two deployments only (each
costs ~20 s on 2 cores): the image workload and the unbatched mode differ from these by the request body and one
config value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the benchmark script as a process

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))


def test_tiny_run_measures_the_workloads_and_writes_the_table(tmp_path):
    out = tmp_path / "serve_load.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "serve_load.py"), "--sizes", "tiny", "--seconds", "1",
                           "--warmup", "0.2", "--clients", "2", "--ray-cpus", "2", "--workloads", "text", "rerank",
                           "--modes", "batched", "--out", str(out), "--no-docs"],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    runs = {(r["workload"], r["mode"]): r for r in results["runs"]}
    assert set(runs) == {("text", "batched"), ("rerank", "batched")}
    for (workload, mode), run in runs.items():
        assert run["errors"] == {} and run["requests"] > 0, run
        assert run["mean_batch"] >= 1
        assert run["forward_ms"] > 0 and 0 < run["ceiling_fraction"]
        model = "Reranker" if workload == "rerank" else "Embedder"
        assert {"proxy", "Api", model, "client"} <= set(run["cpu_ms_per_request"]) and run["cpu_ms_per_request"][
            model] > 0
        split = run["latency_split_ms"]
        assert split["model replica (queue, forward, transfer)"] > 0
    assert set(results["ceilings"]) == {"tiny/text", "tiny/rerank"}
    assert all(c["1"] > 0 and c["32" if k != "tiny/rerank" else "8"] > 0 for k, c in results["ceilings"].items())

    import serve_load

    doc = tmp_path / "serving.md"
    doc.write_text(f"# head\n{serve_load.BEGIN}\nold\n{serve_load.END}\ntail\n")
    serve_load.write_docs(results, doc, tmp_path / "plot.png")
    text = doc.read_text()
    assert text.startswith("# head\n") and text.endswith(f"{serve_load.END}\ntail\n") and "old" not in text
    assert text.count("| tiny |") == len(results["runs"]) + 2 and (tmp_path / "plot.png").stat().st_size > 0


def test_server_timing_header_parses():
    import serve_load

    assert serve_load.server_timing("app;dur=12.5, model;dur=10.1") == {"app": 12.5, "model": 10.1}
    assert serve_load.server_timing("") == {}
