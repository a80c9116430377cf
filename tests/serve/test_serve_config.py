"""serve/config.yaml: every key is one Ray Serve knows (its schema silently ignores misspelt ones, so the check is
ours), the application's args are ServeConfig keys, and the deployments it configures exist in the application."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

from maple.serving.config import ServeConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def unknown_keys(data, model: type[BaseModel], where: str = "") -> list[str]:
    """Keys of `data` (nested dicts and lists) that are not fields of the pydantic `model` tree."""
    if isinstance(data, list):
        return [k for i, item in enumerate(data) for k in unknown_keys(item, model, f"{where}[{i}]")]
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    names = {f.alias or name for name, f in fields.items()} | set(fields)
    found = [f"{where}.{key}".lstrip(".") for key in data if key not in names]
    for key, value in data.items():
        if key in fields:
            for sub in _models_in(fields[key].annotation):
                found += unknown_keys(value, sub, f"{where}.{key}".lstrip("."))
    return found


def test_serve_accepts_the_config():
    ServeDeploySchema.model_validate(CONFIG)


def test_every_key_is_a_field_of_serves_schema():
    assert unknown_keys(CONFIG, ServeDeploySchema) == []


def test_the_strict_check_catches_a_misspelt_key_that_serve_itself_accepts():
    bad = {**CONFIG, "applications": [{**CONFIG["applications"][0],
                                       "deployments": [{"name": "Api", "max_ongoing_request": 8,
                                                        "ray_actor_options": {"num_gpu": 1}}]}]}
    ServeDeploySchema.model_validate(bad)  # Serve: fine
    assert unknown_keys(bad, ServeDeploySchema) == ["applications[0].deployments[0].max_ongoing_request",
                                                    "applications[0].deployments[0].ray_actor_options.num_gpu"]


def test_the_application_is_build_app_at_the_root():
    (app,) = CONFIG["applications"]
    assert (app["import_path"], app["route_prefix"]) == ("serve.app:build_app", "/")


def test_the_args_are_serve_config_keys():
    ServeConfig.model_validate(CONFIG["applications"][0]["args"])  # extra keys are errors


def test_configured_deployments_are_the_applications_deployments():
    from serve.app import Api, Embedder, Reranker, Search

    configured = {d["name"] for d in CONFIG["applications"][0]["deployments"]}
    assert configured == {d.name for d in (Api, Embedder, Reranker, Search)}


def test_model_deployments_accept_a_full_batch():
    args = ServeConfig.model_validate(CONFIG["applications"][0]["args"])
    deployments = {d["name"]: d for d in CONFIG["applications"][0]["deployments"]}
    assert deployments["Embedder"]["max_ongoing_requests"] >= args.max_batch_size
    assert deployments["Reranker"]["max_ongoing_requests"] >= args.rerank_max_batch_size


def test_the_demo_config_fits_a_two_core_machine():
    total = 0.0
    for d in CONFIG["applications"][0]["deployments"]:
        replicas = d.get("num_replicas") or d["autoscaling_config"].get("initial_replicas") or \
            d["autoscaling_config"]["min_replicas"]
        total += replicas * d["ray_actor_options"]["num_cpus"]
    assert total <= 2


def test_the_applications_own_deployments_fit_the_machine_they_start_on():
    """`maple serve` and `maple demo --serve` deploy without serve/config.yaml, on a local Ray of the machine's CPUs:
    2 CPUs together by default, fewer where the cluster has fewer, `serve.num_cpus` where set; each share as
    serve/config.yaml gives it on 2 CPUs."""
    from maple.serving.placement import cpu_shares, serve_cpus

    assert serve_cpus(None, None) == 2 and serve_cpus(None, 64) == 2 and serve_cpus(None, 1) == 1
    assert serve_cpus(0.5, 64) == 0.5
    on_two = {d["name"]: d["ray_actor_options"]["num_cpus"] for d in CONFIG["applications"][0]["deployments"]}
    assert cpu_shares(2.0) == on_two
    assert sum(cpu_shares(1.0).values()) == pytest.approx(1.0)


def test_a_deployment_that_cannot_be_placed_is_refused_naming_asked_free_and_the_key():
    from maple.section import SetupError
    from maple.serving.placement import check_fits

    check_fits(2.0, 2.0, 2.0)
    with pytest.raises(SetupError, match=r"asks 2 logical CPUs \(Embedder 1, Reranker 0.5, Search 0.25, Api 0.25\) "
                                         r"but this Ray has 1.5 of 2 free: set serve.num_cpus=1.5 or lower"):
        check_fits(2.0, 1.5, 2.0)
    with pytest.raises(SetupError, match="has 0 of 2 free: stop what holds them"):
        check_fits(2.0, 0.0, 2.0)


@pytest.mark.e2e  # `maple serve` as a process, which starts a Ray
def test_maple_serve_refuses_within_seconds_what_this_ray_cannot_place(tmp_path):
    """The documented command, asked for more CPUs than the machine has: one sentence, exit code 2, no hang."""
    import os
    import subprocess
    import sys
    import time

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "serve", "--config", "configs/demo.yaml",
                           "serve.num_cpus=64", f"run.output_dir={tmp_path}", "serve.port=0"],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode != 0 and time.monotonic() - started < 120
    assert "the served application asks 64 logical CPUs" in done.stderr + done.stdout
    assert "serve.num_cpus=" in done.stderr + done.stdout


def test_build_app_names_an_unknown_argument():
    from serve.app import build_app

    with pytest.raises(ValueError, match="max_batch_sise"):
        build_app({"max_batch_sise": 8})


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_serving_on_loopback_needs_no_key(host):
    from serve.app import check_exposure

    check_exposure(host, has_key=False, insecure=False)


def test_maple_serve_refuses_a_public_host_without_a_key_before_starting_anything(monkeypatch):
    from serve.app import main

    monkeypatch.delenv("MAPLE_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="refusing to serve on 0.0.0.0 without MAPLE_API_KEY.*--insecure"):
        main(["serve.host=0.0.0.0"])


def test_a_key_or_insecure_allows_a_public_host_and_insecure_says_so(capsys):
    from serve.app import check_exposure

    check_exposure("0.0.0.0", has_key=True, insecure=False)
    assert capsys.readouterr().err == ""
    check_exposure("0.0.0.0", has_key=False, insecure=True)
    assert "WITHOUT AUTH" in capsys.readouterr().err


def test_pixel_limits_must_nest():
    with pytest.raises(ValueError, match="pixel limits must nest"):
        ServeConfig(max_image_pixels=10, max_request_pixels=5)


def test_maple_serve_refuses_a_port_in_use_before_starting_anything():
    import socket

    from maple.section import SetupError
    from serve.app import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SetupError, match=rf"^serve.port={port} is in use on 127.0.0.1 .*; stop it or choose "
                                             rf"another port, e.g. serve.port={port + 1}$"):
            main([f"serve.port={port}"])
