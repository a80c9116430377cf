"""The KubeRay manifests (cluster/kuberay/*.yaml): their structure, what Ray's own autoscaler reads from them
(`ray.autoscaler._private.kuberay`, the code that runs in the head pod's autoscaler sidecar), and that they name
job modules, recipes and the Serve application that exist in this repository."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

from maple.config import load_config

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "cluster" / "kuberay"
MANIFESTS = {
    "raycluster.yaml": "RayCluster",
    "rayjob-mine.yaml": "RayJob",
    "rayjob-train.yaml": "RayJob",
    "rayservice.yaml": "RayService",
}
JOB_MODULES = {"jobs.mine", "jobs.train", "jobs.train_reranker", "jobs.evaluate", "jobs.index", "jobs.synth"}
RAYJOB_ENTRYPOINTS = {"rayjob-mine.yaml": "jobs.mine", "rayjob-train.yaml": "jobs.train"}
# Placeholders filled by `envsubst '$MAPLE_IMAGE $MLFLOW_TRACKING_URI'` (docs/cluster.md).
PLACEHOLDERS = {"MAPLE_IMAGE", "MLFLOW_TRACKING_URI"}
SHARED_MOUNT = "/mnt/shared"
GPU = "nvidia.com/gpu"


def load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def cluster_spec(name: str) -> dict:
    """The RayClusterSpec inside any of the manifests."""
    manifest = load(name)
    spec = manifest["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[manifest["kind"]]()


def autoscaling_config(name: str) -> dict:
    """What the autoscaler sidecar derives from the cluster spec (it validates the result with Ray's schema)."""
    return _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": "maple", "namespace": "default"}, "spec": cluster_spec(name)}
    )


def worker_groups(name: str) -> list[dict]:
    return cluster_spec(name)["workerGroupSpecs"]


def all_groups(name: str) -> list[dict]:
    return [cluster_spec(name)["headGroupSpec"], *worker_groups(name)]


def container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


def group_gpus(group: dict) -> int:
    return int(container(group)["resources"].get("limits", {}).get(GPU, 0))


def custom_resources(name: str, group_name: str) -> dict[str, int]:
    resources = autoscaling_config(name)["available_node_types"][group_name]["resources"]
    return {k: v for k, v in resources.items() if k not in {"CPU", "GPU", "memory"}}


def nodes_launched_for(name: str, demands: list[dict]) -> dict[str, int]:
    config = autoscaling_config(name)
    scorer = functools.partial(
        _default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary(node_availabilities={})
    )
    head = config["head_node_type"]
    to_add, unfulfilled = get_nodes_for(
        config["available_node_types"], {head: 1}, head, max_to_add=100, resources=demands,
        utilization_scorer=scorer,
    )
    assert not unfulfilled, f"{name}: no worker group can run {unfulfilled}"
    return dict(to_add)


def entrypoint(name: str) -> tuple[str, list[str]]:
    """`python -m <module> args...` -> (module, args)."""
    argv = shlex.split(load(name)["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"], f"{name}: entrypoint must be `python -m <module> ...`, got {argv}"
    return argv[2], argv[3:]


def config_argument(name: str) -> str:
    _, args = entrypoint(name)
    return args[args.index("--config") + 1]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_a_ray_io_v1_resource_of_the_expected_kind(name):
    manifest = load(name)
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", MANIFESTS[name])
    assert manifest["metadata"]["name"].startswith("maple")


@pytest.mark.parametrize("name", MANIFESTS)
def test_cluster_runs_the_ray_version_installed_here_with_in_tree_autoscaling(name):
    spec = cluster_spec(name)
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["upscalingMode"] in {"Default", "Aggressive", "Conservative"}


@pytest.mark.parametrize("name", MANIFESTS)
def test_only_the_documented_placeholders_are_left_for_envsubst(name):
    found = set(re.findall(r"\$\{(\w+)\}", (KUBERAY / name).read_text()))
    assert found == PLACEHOLDERS
    assert all(container(g)["image"] == "${MAPLE_IMAGE}" for g in all_groups(name))


def test_docs_explain_every_placeholder():
    docs = (REPO / "docs" / "cluster.md").read_text()
    assert all(placeholder in docs for placeholder in PLACEHOLDERS)


@pytest.mark.parametrize("name", MANIFESTS)
def test_autoscaler_derives_a_valid_config_from_the_cluster_spec(name):
    config = autoscaling_config(name)
    assert set(config["available_node_types"]) == {"headgroup", *(g["groupName"] for g in worker_groups(name))}


@pytest.mark.parametrize("name", MANIFESTS)
def test_gpu_requests_equal_gpu_limits(name):
    # Kubernetes rejects extended resources whose request differs from the limit.
    for group in all_groups(name):
        resources = container(group)["resources"]
        assert resources.get("requests", {}).get(GPU) == resources.get("limits", {}).get(GPU)


@pytest.mark.parametrize("name", MANIFESTS)
def test_autoscaler_sees_each_groups_gpus(name):
    node_types = autoscaling_config(name)["available_node_types"]
    for group in worker_groups(name):
        assert node_types[group["groupName"]]["resources"].get("GPU", 0) == group_gpus(group), group["groupName"]
    assert "GPU" not in node_types["headgroup"]["resources"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_gpu_group_declares_a_custom_resource_and_cpu_groups_none(name):
    for group in worker_groups(name):
        declared = custom_resources(name, group["groupName"])
        if group_gpus(group):
            assert declared and all(k == "serve" or k.startswith("accelerator_type:") for k in declared), declared
        else:
            assert declared == {}, group["groupName"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_serve_resource_marks_the_1_gpu_groups_and_accelerator_type_the_8_gpu_groups(name):
    for group in worker_groups(name):
        declared = custom_resources(name, group["groupName"])
        assert ("serve" in declared) == (group_gpus(group) == 1), group["groupName"]
        assert any(k.startswith("accelerator_type:") for k in declared) == (group_gpus(group) == 8)


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-mine.yaml", "rayjob-train.yaml"])
def test_worker_groups_start_at_zero_pods(name):
    assert [(g["replicas"], g["minReplicas"]) for g in worker_groups(name)] == [(0, 0)] * len(worker_groups(name))


def test_rayservice_scales_its_serving_group_beyond_the_warm_pod():
    (group,) = worker_groups("rayservice.yaml")
    assert group["minReplicas"] <= group["replicas"] < group["maxReplicas"]


def test_autoscaler_starts_the_h100_group_for_eight_h100_training_workers():
    workers = [{"CPU": 1, "GPU": 1, "accelerator_type:H100": 0.001}] * 8
    assert nodes_launched_for("raycluster.yaml", workers) == {"gpu-h100x8": 1}


def test_autoscaler_starts_the_serving_group_for_replicas_that_ask_for_serve():
    assert nodes_launched_for("raycluster.yaml", [{"CPU": 1, "GPU": 1, "serve": 1}] * 2) == {"gpu-serve": 2}


def test_autoscaler_starts_cpu_pods_not_gpu_pods_for_cpu_only_tasks():
    assert set(nodes_launched_for("raycluster.yaml", [{"CPU": 1}] * 20)) == {"cpu"}


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_pod_mounts_the_shared_volume_where_the_cluster_recipe_writes(name):
    for group in all_groups(name):
        pod = group["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if
                  "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in container(group)["volumeMounts"]}
        assert claims[mounts[SHARED_MOUNT]] == "maple-shared"
    assert load_config(REPO / "configs" / "cluster.yaml").run.output_dir.startswith(SHARED_MOUNT + "/")


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_ray_container_gets_the_mlflow_tracking_uri(name):
    for group in all_groups(name):
        env = {e["name"]: e.get("value") for e in container(group).get("env", [])}
        assert env["MLFLOW_TRACKING_URI"] == "${MLFLOW_TRACKING_URI}"


@pytest.mark.parametrize("name", RAYJOB_ENTRYPOINTS)
def test_rayjob_entrypoint_runs_its_job_module(name):
    module, _ = entrypoint(name)
    assert module == RAYJOB_ENTRYPOINTS[name]
    assert module in JOB_MODULES


@pytest.mark.parametrize("name", RAYJOB_ENTRYPOINTS)
def test_rayjob_job_module_exists_in_the_repository(name):
    module, _ = entrypoint(name)
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{name} runs {module}, which does not exist"


@pytest.mark.parametrize("name", RAYJOB_ENTRYPOINTS)
def test_rayjob_config_is_a_valid_recipe_in_configs(name):
    path = config_argument(name)
    assert Path(path).parent == Path("configs") and (REPO / path).is_file(), path
    load_config(REPO / path)  # unknown keys or bad values raise ConfigError naming the key


@pytest.mark.parametrize("name", RAYJOB_ENTRYPOINTS)
def test_rayjob_runs_in_the_repository_of_the_image_and_deletes_its_cluster(name):
    spec = load(name)["spec"]
    # working_dir makes the relative `--config configs/...` resolve (the image holds the tree there).
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": "/home/ray/maple"}
    assert spec["shutdownAfterJobFinishes"] is True
    assert "rayClusterSpec" in spec or "clusterSelector" in spec


def test_mine_cluster_has_the_gpus_the_judge_actor_pool_asks_for():
    cfg = load_config(REPO / config_argument("rayjob-mine.yaml"))
    available = sum(g["maxReplicas"] * group_gpus(g) for g in worker_groups("rayjob-mine.yaml"))
    assert cfg.judge.num_actors * max(cfg.judge.gpus_per_actor, cfg.judge.tensor_parallel_size) <= available


def test_train_cluster_has_a_gpu_for_every_training_worker():
    cfg = load_config(REPO / config_argument("rayjob-train.yaml"))
    available = sum(g["maxReplicas"] * group_gpus(g) for g in worker_groups("rayjob-train.yaml"))
    assert cfg.train.use_gpu and cfg.train.num_workers <= available


def serve_applications(text: str) -> list:
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(text)).applications


def test_rayservice_serve_config_is_valid_for_ray_serve_and_names_build_app():
    (app,) = serve_applications(load("rayservice.yaml")["spec"]["serveConfigV2"])
    assert app.import_path == "serve.app:build_app"
    assert (REPO / "serve" / "app.py").is_file()


def test_rayservice_serves_the_application_of_serve_config_yaml():
    (app,) = serve_applications(load("rayservice.yaml")["spec"]["serveConfigV2"])
    local = serve_applications((REPO / "serve" / "config.yaml").read_text())
    assert [(a.name, a.import_path, a.route_prefix) for a in local] == [(app.name, app.import_path, app.route_prefix)]


API_KEY_SECRET = {"name": "maple-api-key", "key": "api-key"}


def test_every_serving_pod_reads_the_api_key_from_a_secret_not_the_manifest():
    """The proxies listen on 0.0.0.0 (serveConfigV2): without a key the API would be open to the cluster network.
    The key comes from a Kubernetes Secret that the pods require (no `optional`), never a literal in the manifest."""
    http = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])["http_options"]
    assert http["host"] == "0.0.0.0"
    for group in all_groups("rayservice.yaml"):
        (entry,) = [e for e in container(group)["env"] if e["name"] == "MAPLE_API_KEY"]
        assert "value" not in entry and entry["valueFrom"] == {"secretKeyRef": API_KEY_SECRET}


def test_the_docs_create_the_api_key_secret_the_rayservice_reads():
    for text in ((REPO / "docs" / "cluster.md").read_text(), (KUBERAY / "rayservice.yaml").read_text()):
        assert f"kubectl create secret generic {API_KEY_SECRET['name']} --from-literal={API_KEY_SECRET['key']}=" in text
