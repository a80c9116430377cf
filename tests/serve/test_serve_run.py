"""`serve run serve/config.yaml` (the CLI, its own local Ray) starts the application and answers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.e2e  # runs `serve run` as a process

REPO = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 420  # several Python processes import torch; minutes on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """Ctrl-C (serve run then deletes the app and stops the Ray it started), then kill whatever is left of the
    process group."""
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's own children of the group
    except ProcessLookupError:
        pass


def test_serve_run_of_the_config_starts_and_answers(tmp_path):
    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port  # the only change: a free port instead of 8000
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    ray_tmp = tempfile.mkdtemp(prefix="mray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MAPLE_API_KEY")}
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled")
    log = (tmp_path / "serve.log").open("wb")
    serve_bin = str(Path(sys.executable).with_name("serve"))  # the venv's; CI does not activate the venv
    proc = subprocess.Popen([serve_bin, "run", str(path)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = requests.get(f"{url}/health", timeout=5)
                if health.status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # the proxy is up before the app
                pass
            time.sleep(1)  # polling an external process's port; there is no event to wait on
        assert health is not None and health.status_code == 200, (tmp_path / "serve.log").read_text()[-3000:]
        response = requests.post(f"{url}/v1/embeddings", json={"input": ["a small red circle"]}, timeout=60)
        assert response.status_code == 200
        body = response.json()
        assert (body["model"], body["model_version"]) == ("maple-tiny-clip", "random")
        assert len(body["data"][0]["embedding"]) == 64
    finally:
        stop_group(proc)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
