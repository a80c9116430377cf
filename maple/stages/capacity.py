"""What the Ray cluster can place, for the jobs' start-up checks: its resources (unbounded where an autoscaler can
add nodes) and work pinned to one GPU type. A plan that cannot be placed would otherwise wait forever."""

from __future__ import annotations

import json
import math

import ray
import ray.data
import ray.experimental.internal_kv
from ray._private import ray_constants

from maple.section import SetupError


def autoscaling() -> bool:
    """Whether an autoscaler runs for this Ray cluster: its groups may be at zero nodes until a job asks for them
    (cluster/*.yaml). Every Ray's monitor reports to the GCS, a local one's too, through a read-only autoscaler that
    names each node's type after its id ("node_<id>"); an autoscaler over a launcher config names the config's
    types."""
    if not ray.is_initialized():  # not connected: no autoscaler to count on
        return False
    status = ray.experimental.internal_kv._internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {} if status else {}
    return any(node_type != f"node_{node}" for node, node_type in mapping.items())


def cluster_capacity() -> dict[str, float]:
    """The resources the start-up checks count on: the Ray cluster's own, unless an autoscaler runs: then CPUs and
    GPUs count as unbounded and the autoscaler itself reports work that no node type can run."""
    resources = dict(ray.cluster_resources())
    if autoscaling():
        resources.update(CPU=math.inf, GPU=math.inf)
    return resources


def data_capacity() -> dict[str, float]:
    """`cluster_capacity()` within what Ray Data may use (`run.data_max_cpus` / `run.data_max_gpus`, set by
    `maple.runtime.init_ray`): a dataset's actor pools must fit under that cap, or they would wait forever."""
    resources = cluster_capacity()
    limits = ray.data.DataContext.get_current().execution_options.resource_limits
    resources.update(CPU=min(resources.get("CPU", 0.0), limits.cpu), GPU=min(resources.get("GPU", 0.0), limits.gpu))
    return resources


def check_accelerator(accelerator_type: str | None, key: str, resources: dict[str, float]) -> None:
    """Work pinned to one GPU type (`accelerator_type:<name>`, which Ray puts on a node with that GPU) on a cluster
    with no such node and no autoscaler to start one would wait forever: refuse it, naming the types there are."""
    if not accelerator_type or autoscaling() or resources.get(f"accelerator_type:{accelerator_type}", 0) > 0:
        return
    there = sorted(k.removeprefix("accelerator_type:") for k in resources if k.startswith("accelerator_type:"))
    raise SetupError(f"{key}={accelerator_type}: no node of this Ray cluster has that GPU (it has "
                     f"{', '.join(there) or 'no accelerator type'}); set {key} to one of those, or leave it unset")
