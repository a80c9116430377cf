"""The Ray cluster launcher configs (cluster/aws.yaml, cluster/gcp.yaml) against Ray's own schema, validation and
autoscaling logic (Ray 2.60, the version installed here), and against the facts of the instance types they name."""

from __future__ import annotations

import copy
import functools
import json
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import tomllib
import yaml
from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLOUDS = ["aws", "gcp"]

# Published machine shapes: (vCPUs, GPUs, the GPU's product name as the NVIDIA driver reports it).
A100, H100, A10G, L4 = "NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA A10G", "NVIDIA L4"
AWS_INSTANCES = {
    "m5.2xlarge": (8, 0, None),
    "m5.4xlarge": (16, 0, None),
    "p4d.24xlarge": (96, 8, A100),
    "p5.48xlarge": (192, 8, H100),
    "g5.xlarge": (4, 1, A10G),
}
GCP_MACHINES = {
    "n2-standard-8": (8, 0, None),
    "n2-standard-16": (16, 0, None),
    "a2-highgpu-8g": (96, 8, A100),
    "a3-highgpu-8g": (208, 8, H100),
    "g2-standard-4": (4, 1, L4),
}
GCP_ACCELERATORS = {"nvidia-tesla-a100": A100, "nvidia-h100-80gb": H100, "nvidia-l4": L4}


def load(cloud: str) -> dict:
    return yaml.safe_load((REPO / "cluster" / f"{cloud}.yaml").read_text())


def machine(cloud: str, node_config: dict) -> tuple[int, int, str | None]:
    if cloud == "aws":
        return AWS_INSTANCES[node_config["InstanceType"]]
    return GCP_MACHINES[node_config["machineType"]]


def ray_accelerator_type(product_name: str | None) -> str | None:
    """The name in the `accelerator_type:<name>` resource Ray puts on a node with this GPU."""
    return product_name and NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(product_name)


def worker_types(cfg: dict) -> dict[str, dict]:
    return {name: t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


def accelerator_types(resources: dict) -> list[str]:
    return [key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")]


def nodes_launched_for(cfg: dict, demands: list[dict]) -> dict[str, int]:
    """Node types (and counts) Ray's autoscaler adds for `demands`, starting from a cluster of just the head."""
    prepared = prepare_config(copy.deepcopy(cfg))
    scorer = functools.partial(
        _default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary(node_availabilities={})
    )
    head = prepared["head_node_type"]
    to_add, unfulfilled = get_nodes_for(
        prepared["available_node_types"], {head: 1}, head, max_to_add=100, resources=demands,
        utilization_scorer=scorer,
    )
    assert not unfulfilled, f"no node type of the config can run {unfulfilled}"
    return dict(to_add)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_config_matches_the_json_schema_shipped_with_ray(cloud):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load(cloud), schema)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_config_passes_rays_own_validation_once_defaults_are_filled(cloud):
    # What `ray up` does before launching: merge the provider's defaults, then validate.
    validate_config(prepare_config(load(cloud)))


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_worker_group_starts_at_zero_nodes(cloud):
    starting = {name: t.get("min_workers", 0) for name, t in worker_types(load(cloud)).items()}
    assert set(starting.values()) == {0}, starting


@pytest.mark.parametrize("cloud", CLOUDS)
def test_head_runs_no_tasks(cloud):
    cfg = load(cloud)
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_worker_groups_declare_the_cpus_and_gpus_of_their_machine(cloud):
    for name, node_type in worker_types(load(cloud)).items():
        cpus, gpus, _ = machine(cloud, node_type["node_config"])
        resources = node_type["resources"]
        assert (resources["CPU"], resources.get("GPU", 0)) == (cpus, gpus), name


@pytest.mark.parametrize("cloud", CLOUDS)
def test_gpu_groups_declare_the_accelerator_type_ray_advertises_for_their_gpu(cloud):
    # Declared so the autoscaler can plan a node it has not seen; Ray sets the same resource on the running node.
    for name, node_type in worker_types(load(cloud)).items():
        _, gpus, product = machine(cloud, node_type["node_config"])
        expected = ray_accelerator_type(product)
        assert accelerator_types(node_type["resources"]) == ([expected] if gpus else []), name
        if gpus:
            assert node_type["resources"][f"accelerator_type:{expected}"] == 1, name


@pytest.mark.parametrize("cloud", CLOUDS)
def test_there_are_8_gpu_groups_for_judging_and_training_and_a_1_gpu_serving_group(cloud):
    gpus = {name: t["resources"].get("GPU", 0) for name, t in worker_types(load(cloud)).items()}
    serving = [name for name, t in worker_types(load(cloud)).items() if "serve" in t["resources"]]
    assert sorted(gpus.values()).count(8) >= 1
    assert len(serving) == 1 and gpus[serving[0]] == 1


def test_gcp_gpu_machines_attach_the_gpus_they_declare_and_terminate_on_host_maintenance():
    for name, node_type in worker_types(load("gcp")).items():
        config = node_type["node_config"]
        _, gpus, product = GCP_MACHINES[config["machineType"]]
        attached = config.get("guestAccelerators", [])
        assert sum(a["acceleratorCount"] for a in attached) == gpus, name
        assert {GCP_ACCELERATORS[a["acceleratorType"]] for a in attached} == ({product} if gpus else set()), name
        if gpus:
            assert config["scheduling"]["onHostMaintenance"] == "TERMINATE", name


@pytest.mark.parametrize("cloud", CLOUDS)
def test_autoscaler_starts_one_h100_node_for_eight_h100_training_workers(cloud):
    # ScalingConfig(num_workers=8, use_gpu=True, accelerator_type="H100") asks for these bundles.
    workers = [{"CPU": 1, "GPU": 1, "accelerator_type:H100": 0.001}] * 8
    assert nodes_launched_for(load(cloud), workers) == {"gpu_h100x8": 1}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_autoscaler_starts_serving_nodes_for_replicas_that_ask_for_serve(cloud):
    replicas = [{"CPU": 1, "GPU": 1, "serve": 1}] * 2
    assert nodes_launched_for(load(cloud), replicas) == {"gpu_serve": 2}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_autoscaler_starts_cpu_nodes_not_gpu_nodes_for_cpu_only_tasks(cloud):
    tasks = [{"CPU": 1}] * 32
    assert set(nodes_launched_for(load(cloud), tasks)) == {"cpu_worker"}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_nodes_install_maple_from_the_shipped_repository(cloud):
    cfg = prepare_config(load(cloud))  # merges setup_commands into the head's and the workers' lists
    assert cfg["file_mounts"] == {"~/maple": "."}
    assert any('pip install --quiet "$HOME/maple"' == c for c in cfg["head_setup_commands"])
    assert any('pip install --quiet "$HOME/maple[vllm]"' == c for c in cfg["worker_setup_commands"])
    cpu_only = cfg["available_node_types"]["cpu_worker"]["worker_setup_commands"]
    assert cpu_only == ['pip install --quiet "$HOME/maple"']


def test_the_vllm_extra_installed_on_gpu_workers_exists_in_pyproject():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "vllm" in extras


@pytest.mark.parametrize("cloud", CLOUDS)
def test_container_runs_the_ray_and_python_versions_of_this_project(cloud):
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert load(cloud)["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{version}-gpu"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_shared_filesystem_is_mounted_into_the_container_where_the_cluster_recipe_writes(cloud):
    from maple.config import load_config

    mount = "/mnt/shared"
    assert f"-v {mount}:{mount}" in load(cloud)["docker"]["run_options"]
    assert load_config(REPO / "configs" / "cluster.yaml").run.output_dir.startswith(mount + "/")
