"""docs/your-data.md, run as written: every ```bash block of the page, in order, on a tiny copy of its layout.

The convention: each ```bash block of the page is run, line by line (a trailing backslash continues a line; `#`
lines are comments); a line `NAME=...` is a shell variable that the later lines of its section see. No other fence
may hold a shell command (`test_every_shell_block_of_the_page_is_run`). The blocks before "## On a cluster" run on
one machine (each job starts an embedded Ray); the blocks after it are submitted to a `ray start --head` of the
suite's own on 127.0.0.1 (`ray_head`, tests/conftest.py). Every command runs in a copy of the repository (its tracked
and unignored files), so the page's relative outputs (`runs/photos`, `mlflow.db`) land there and `--working-dir .`
uploads it.

What differs on CI, and nothing else:
- the placeholders (each test's `placeholders`): the page's paths (`/data/photos`, `/data/photos-test`,
  `/mnt/shared`) become folders of the test, `http://<head>:8265` the local head's job API, ports 8000 and 5000
  free ones;
- CI_OVERRIDES, appended to every maple job (where a later `key=value` wins, as the page says): the tiny random
  CLIP twin instead of `model.name_or_path`, the tiny random LLaVA judge (`hf`: vLLM's CPU build cannot run a
  multimodal model, DEVELOPERS.md) instead of the page's checkpoints, no GPUs, and the sizes (steps, batch, top-K,
  training in Ray Train's local mode, larger val/test shares of 40 pictures so each split has pairs);

What each half is the only proof of: the one-machine half, of the `maple` commands, the quarantine listing, a
held-out set imported as the test split and evaluated, `maple serve` answering /v1/search over the index, and the
MLflow UI listing every job's run. The cluster half, of the same jobs submitted with `--working-dir .` and the
page's cluster settings: their outputs on the shared path, their runs in the MLflow store there. Training with
several workers under ZeRO-2 through `ray job submit` is tests/jobs/test_train.py's proof, so both halves train in
Ray Train's local mode.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e  # runs the page's commands as processes

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "your-data.md"
CLUSTER_HEADING = "## On a cluster"
N_PHOTOS, N_HELD_OUT = 40, 12  # pictures in the main folder (2 captions each) and in the held-out folder
CI_OVERRIDES = ["model.name_or_path=null", "model.image_size=64", "model.max_text_tokens=64", "judge.backend=hf",
                "judge.gpus_per_actor=0", "judge.num_actors=1", "judge.batch_size=32", "mine.top_k=8",
                "mine.num_hard_negatives=3", "train.use_gpu=false", "train.num_workers=0", "train.zero_stage=0",
                "train.steps=2", "train.batch_size=8", "train.warmup_steps=0", "data.val_fraction=0.2",
                "data.test_fraction=0.2"]
COMMAND_TIMEOUT_S = 600


# --- the page ------------------------------------------------------------------------------------------------------


def shell_blocks(text: str) -> list[tuple[str, str]]:
    """[(the fence's info string, its body)] of every fenced block, in order."""
    return re.findall(r"^```([^\n]*)\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def commands(block: str) -> list[str]:
    """A block's commands: backslash continuations joined, blank and comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def sections() -> dict[str, list[str]]:
    """The commands of the page's bash blocks: {"one machine": [...], "cluster": [...]}, in order."""
    text = DOC.read_text()
    one, cluster = text.split(CLUSTER_HEADING, 1)
    return {name: [c for info, body in shell_blocks(part) if info.strip() == "bash" for c in commands(body)]
            for name, part in (("one machine", one), ("cluster", cluster))}


def test_every_shell_block_of_the_page_is_run():
    """A command in any other fence would escape the test: only ```bash holds commands, and both halves have some."""
    fences = {info.strip() for info, _ in shell_blocks(DOC.read_text())}
    assert fences <= {"bash", "text", "yaml", "json", "python"}, fences
    found = sections()
    assert all(found.values()), found


# --- the tiny layout ------------------------------------------------------------------------------------------------


def _scene_captions(rng: random.Random, n: int) -> list[tuple]:
    """n (image, two distinct captions) of the synthetic world (maple/data/synth.py)."""
    from maple.data.config import WorldConfig
    from maple.data.synth import describe, render_caption, render_scene, sample_scene

    world = WorldConfig()
    out = []
    while len(out) < n:
        scene = sample_scene(rng, world, set())
        captions = {render_caption(describe(scene, rng, world.relations)) for _ in range(8)}
        if len(captions) >= 2:
            out.append((render_scene(scene, 64)[0], sorted(captions)[:2]))
    return out


def write_photos(folder: Path, rng: random.Random) -> dict:
    """The page's layout: PNGs in two subfolders and metadata.csv (one line per caption), plus three bad lines (a
    missing file, a file that is not an image, a line with a field too many). Returns what the import should see."""
    rows, ids = [], []
    for k, (image, captions) in enumerate(_scene_captions(rng, N_PHOTOS)):
        name = f"{'beach' if k % 2 else 'city'}/{k:04d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
        rows += [[name, c] for c in captions]
        ids.append(name)
    (folder / "city" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    rows += [["city/missing.png", "a red circle"], ["city/broken.png", "a blue square"],
             ["beach/0001.png", "one field", "too many"]]
    with open(folder / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file_name", "caption"], *rows])
    return {"ids": ids, "reasons": {"missing_file": 1, "corrupt": 1, "malformed_line": 1}}


def write_held_out(folder: Path, rng: random.Random) -> list[str]:
    """A held-out set in the other captions format: metadata.jsonl, a list of captions per line."""
    folder.mkdir(parents=True)
    ids = []
    with open(folder / "metadata.jsonl", "w") as f:
        for k, (image, captions) in enumerate(_scene_captions(rng, N_HELD_OUT)):
            image.save(folder / f"held-{k:03d}.png")
            f.write(json.dumps({"file_name": f"held-{k:03d}.png", "captions": captions}) + "\n")
            ids.append(f"held-{k:03d}.png")
    return ids


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict:
    """The page's folders (/data/photos, /data/photos-test, /mnt/shared with the same photos) and a tiny judge."""
    from maple.models.tiny_judge import build_tiny_judge

    root = tmp_path_factory.mktemp("your-data")
    rng = random.Random(18)
    photos = root / "data" / "photos"
    expected = write_photos(photos, rng)
    held_out = write_held_out(root / "data" / "photos-test", rng)
    shutil.copytree(photos, root / "shared" / "data" / "photos")  # "put your folder there"
    judge = build_tiny_judge(root / "tiny-llava", "llava")
    return {"root": root, "photos": expected, "held_out": held_out, "judge": str(judge)}


def repo_copy(dest: Path) -> Path:
    """The repository's tracked and unignored files (what `--working-dir .` uploads, less nothing)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- running the page -----------------------------------------------------------------------------------------------


def is_job(command: str) -> bool:
    return command.startswith("maple ") or " -m jobs." in command


def for_ci(command: str, placeholders: dict[str, str], overrides: list[str]) -> str:
    """The page's command with the placeholders replaced (one pass, longest first) and the CI overrides appended to
    a maple job."""
    pattern = re.compile("|".join(re.escape(k) for k in sorted(placeholders, key=len, reverse=True)))
    command = pattern.sub(lambda m: placeholders[m.group(0)], command)
    return f"{command} {' '.join(shlex.quote(o) for o in overrides)}" if is_job(command) else command


class Page:
    """Runs a section's commands in order in one folder; servers (`maple serve`, `mlflow ui`) in the background,
    each stopped by its process group."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.cwd, self.env = cwd, env
        self.variables: list[str] = []  # NAME=... lines, run before each later command
        self.servers: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def run(self, command: str) -> str:
        """Run one command of the page (as the CI has it); its output. The time each took is printed: the suite's
        budget is minutes, and this file is most of them."""
        started = time.monotonic()
        try:
            return self._run(command)
        finally:
            print(f"{time.monotonic() - started:6.1f} s  {command[:100]}", flush=True)

    def _run(self, command: str) -> str:
        if re.match(r"^[A-Z_]+=", command):
            self.variables.append(command)
            return ""
        script = "\n".join(["set -euo pipefail", *self.variables, command])
        if command.startswith(("maple serve", "mlflow ui")):
            log = self.cwd / f"server-{len(self.servers)}.log"
            self.logs.append(log)
            with open(log, "wb") as out:
                self.servers.append(subprocess.Popen(["bash", "-c", script], cwd=self.cwd, env=self.env,
                                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            return ""
        deadline = time.monotonic() + 300
        while True:
            done = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S, check=False)
            output = done.stdout + done.stderr
            # A new head accepts jobs once its dashboard agent has registered (conftest.RayHead.submit)
            if "No available agent" not in output or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{output[-4000:]}"
        return output

    def wait_until_answers(self, url: str, timeout_s: float = 420) -> None:
        """Poll a server's health URL (its process holds no event to wait on); fail with its log if it dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [(p, log) for p, log in zip(self.servers, self.logs) if p.poll() is not None]
            assert not dead, f"a server exited:\n{dead[0][1].read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"{url} did not answer in {timeout_s:.0f} s:\n" +
                             "\n".join(log.read_text()[-2000:] for log in self.logs))

    def stop(self) -> None:
        """Ctrl-C to each server's process group (a server stops its own Ray), then SIGKILL to what is left of the
        groups after a grace period (Ray's processes outlive the group's leader)."""
        for proc in self.servers:
            _signal_group(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 15
        for proc in self.servers:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def job_json(output: str, first_key: str) -> dict:
    """The JSON line a job prints last (`{"<first_key>": ...}`), from its output or `ray job submit`'s tail of it."""
    start = output.rindex('{"' + first_key + '"')
    return json.loads(output[start:output.index("\n", start)])


def env_for(base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MAPLE_API_KEY")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the venv's maple, ray, mlflow, python
    return env


# --- what the page says each step produces ----------------------------------------------------------------------------


def same_path(reported: str, expected: Path) -> bool:
    """A path a job printed, absolute or relative to the folder it ran in, names `expected`."""
    if Path(reported).is_absolute():
        return Path(reported) == expected
    return expected.as_posix().endswith("/" + reported)


def split_ids(world: Path, split: str) -> list[str]:
    return pq.read_table(world / split, columns=["id"])["id"].to_pylist()


def check_import(output: str, world: Path, photos: dict) -> dict:
    summary = job_json(output, "output")
    assert summary["reasons"] == photos["reasons"]
    assert sum(summary["splits"].values()) == len(photos["ids"])
    assert sorted(i for s in ("train", "val", "test") for i in split_ids(world, s)) == sorted(photos["ids"])
    assert all(summary["splits"].values()), summary  # every split has pairs at the CI shares
    return summary


def check_mined(output: str, world: Path) -> None:
    n_train = len(split_ids(world, "train"))
    mined = world.parent / "mined"
    counts = json.loads((mined / "summary.json").read_text())["counts"]
    # a query per caption (t2i, two per picture) and per picture (i2t)
    assert counts["judged_rows_t2i"] == 2 * n_train and counts["judged_rows_i2t"] == n_train, counts
    assert pq.read_table(mined / "judged").num_rows == 3 * n_train
    assert (mined / "score_histogram.png").is_file()
    assert same_path(job_json(output, "output")["output"], mined)


def check_trained(output: str, run_dir: Path) -> None:
    summary = job_json(output, "model_dir")
    assert same_path(summary["model_dir"], run_dir / "models" / "photos-train")
    assert (run_dir / "models" / "photos-train" / "maple_embedder.json").is_file()
    assert summary["registry_uri"] == "models:/photos-embedder/1"
    assert (run_dir / "ray_results" / "photos-train" / "checkpoint").is_dir()
    assert summary["val_mean_r@1"] is not None  # recall on the val split, as the page says


def check_evaluated(run_dir: Path, n_test_pairs: int) -> dict:
    out = run_dir / "eval" / "photos-train"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_r@1", "modality_gap"} <= set(metrics)
    assert not any(k.startswith("comp_") for k in metrics)  # your pairs have no compositional split
    assert (out / "report.md").is_file()
    matched = np.load(out / "similarities.npz")["matched"]
    assert len(matched) == 2 * n_test_pairs  # every test caption against its own picture: the test split, no other
    return metrics


def check_indexed(output: str, run_dir: Path) -> None:
    manifest = job_json(output, "embedder")
    assert same_path(manifest["path"], run_dir / "index")
    assert manifest["size"] == len(split_ids(run_dir / "world", "train")) and manifest["quarantined"] == 0


def ui_run_names(url: str) -> set[str]:
    """The names of the runs the MLflow UI at `url` lists in the experiment `maple` (its REST API)."""
    def call(path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    experiments = call("experiments/search", {"filter": "name = 'maple'", "max_results": 10})["experiments"]
    runs = call("runs/search", {"experiment_ids": [e["experiment_id"] for e in experiments], "max_results": 100})
    return {r["info"]["run_name"] for r in runs["runs"]}


def mlflow_run_names(tracking_uri: str) -> set[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("maple")
    return {r.info.run_name for r in client.search_runs([experiment.experiment_id])}


RUN_NAMES = {"photos-import", "photos-mine", "photos-train", "photos-eval-photos-train", "photos-index"}


# --- the two halves -------------------------------------------------------------------------------------------------


def test_one_machine_section_runs_as_written(layout, tmp_path):
    root, photos = layout["root"], layout["photos"]
    cwd = repo_copy(tmp_path / "repo")
    serve_port, mlflow_port = free_port(), free_port()
    placeholders = {"/data/photos": str(root / "data" / "photos"),
                    "/data/photos-test": str(root / "data" / "photos-test"),
                    "127.0.0.1:8000": f"127.0.0.1:{serve_port}", "--port 5000": f"--port {mlflow_port}"}
    overrides = [*CI_OVERRIDES, f"judge.model={layout['judge']}", f"serve.port={serve_port}"]
    env = env_for(os.environ)  # the machine's own CPU count: the page's commands must fit a 2-core machine
    page = Page(cwd, env)
    run_dir, world = cwd / "runs" / "photos", cwd / "runs" / "photos" / "world"
    steps = iter(sections()["one machine"])

    def step(expected: str) -> str:
        command = next(steps)
        assert command.startswith(expected), f"the page's next command is {command!r}, the test expects {expected!r}"
        return page.run(for_ci(command, placeholders, overrides))

    try:
        check_import(step("maple data import"), world, photos)
        listing = step("python -c")
        assert all(reason in listing for reason in photos["reasons"]) and "city/missing.png" in listing

        held_out = job_json(step("maple data import"), "output")
        assert held_out["splits"] == {"test": N_HELD_OUT} and held_out["quarantined"] == 0
        assert sorted(split_ids(world, "test")) == layout["held_out"]  # the held-out set replaced the hashed one

        step("mlflow ui")  # it starts while the jobs below run; asked for their runs at the end

        check_mined(step("maple mine"), world)
        check_trained(step("maple train"), run_dir)
        step("maple eval")
        check_evaluated(run_dir, N_HELD_OUT)
        check_indexed(step("maple index"), run_dir)

        step("maple serve")
        page.wait_until_answers(f"http://127.0.0.1:{serve_port}/health")
        hits = json.loads(step("curl"))["data"]
        assert len(hits) == 5 and {h["id"] for h in hits} <= set(split_ids(world, "train"))
        assert all(h["payload"]["captions"] for h in hits)

        assert next(steps, None) is None, "the page has a command the test does not check"

        page.wait_until_answers(f"http://127.0.0.1:{mlflow_port}/health")
        assert RUN_NAMES <= ui_run_names(f"http://127.0.0.1:{mlflow_port}")
    finally:
        page.stop()


def test_cluster_section_runs_as_written_against_a_local_head(layout, ray_head, tmp_path):
    root, photos = layout["root"], layout["photos"]
    cwd = repo_copy(tmp_path / "repo")
    shared = root / "shared"
    placeholders = {"/mnt/shared": str(shared), "http://<head>:8265": ray_head.address}
    overrides = [*CI_OVERRIDES, f"judge.model={layout['judge']}"]
    page = Page(cwd, env_for(ray_head.env))
    run_dir = shared / "maple" / "runs" / "photos"
    steps = iter(sections()["cluster"])

    def step(expected: str) -> str:
        command = next(steps)
        assert expected in command, f"the page's next command is {command!r}, the test expects {expected!r}"
        output = page.run(for_ci(command, placeholders, overrides))
        assert not command.startswith("ray job submit") or "succeeded" in output, output[-3000:]
        return output

    step("CLUSTER=")
    check_import(step("-m jobs.import_data"), run_dir / "world", photos)
    check_mined(step("-m jobs.mine"), run_dir / "world")
    check_trained(step("-m jobs.train"), run_dir)
    step("-m jobs.evaluate")
    check_evaluated(run_dir, len(split_ids(run_dir / "world", "test")))
    check_indexed(step("-m jobs.index"), run_dir)
    assert next(steps, None) is None, "the page has a command the test does not check"
    assert RUN_NAMES <= mlflow_run_names(f"sqlite:///{shared / 'maple' / 'mlflow.db'}")
