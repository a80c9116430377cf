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


def test_the_applications_own_deployments_fit_a_two_core_machine():
    """`maple serve` and `maple demo --serve` deploy without serve/config.yaml, on a local Ray of the machine's CPUs."""
    from serve.app import Api, Embedder, Reranker, Search

    assert sum(d.ray_actor_options["num_cpus"] for d in (Api, Embedder, Reranker, Search)) <= 2


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
