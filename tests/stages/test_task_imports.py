"""Ray Data runs plain batch functions in task workers, which import each function's module (cloudpickle pickles it
by reference). torch and transformers cost 5 s of CPU per worker process to import, so the modules whose functions
run as tasks, and what a reference judge's actor builds, import neither (DEVELOPERS.md). Nor does reading a recipe:
every `maple` command and job driver parses one. Nor do the drivers of the jobs that only hand model paths to Ray
Data's actors (import, mine, evaluate, index): torch and transformers cost each ~6 s of CPU at start."""

from __future__ import annotations

import subprocess
import sys

TASK_MODULES = [
    "maple.stages.mine_steps",  # retrieve_candidates, propose_rewrites, mine_queries; JudgeQueries' module
    "maple.stages.eval_rows",  # the evaluation's row shaping
    "maple.stages.read",  # the readers and checks of every input format
    "maple.stages.shards",
    "maple.data.splits",  # split_rows, the reranker's validation share
    "maple.config",  # load_config: every command's recipe (maple.losses.config among its sections)
    "maple.runtime",
    "jobs.cli",  # the `maple` command
    "jobs.import_data",
    "jobs.mine",
    "jobs.evaluate",
    "jobs.index",
]


def test_task_modules_drivers_and_the_reference_judge_import_no_torch():
    code = "\n".join([
        "import sys",
        *(f"import {module}" for module in TASK_MODULES),
        "from maple.judge.backends import build_judge",
        "from maple.judge.config import JudgeConfig",
        "build_judge(JudgeConfig(backend='reference'))",
        "maple.config.load_config('configs/demo.yaml', [])",
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
