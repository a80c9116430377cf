"""What every entrypoint (jobs/, serve/) shares: the command line into a `Config`, and joining or starting Ray."""

from __future__ import annotations

import argparse
import logging
import math
import os

from maple.config import Config, ConfigError, load_config
from maple.section import RunConfig, SetupError


def parse_config(argv: list[str] | None, description: str) -> Config:
    """`--config recipe.yaml section.key=value ...`; config errors exit with the message (naming file and key)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML recipe (configs/*.yaml); defaults apply to what it leaves out")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=1e-4")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"config error: {exc}\n")
    if args.address:
        cfg.run.ray_address = args.address
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cfg


def init_ray(run: RunConfig, quiet: bool = False, **kwargs) -> str | None:
    """Join `run.ray_address` / RAY_ADDRESS when given (a cluster, or `ray job submit`); else start a local Ray.
    `quiet` (a job whose console is a `maple.console.Console`): the workers' output stays in Ray's session logs
    instead of being forwarded to the driver, and Ray Data draws no progress of its own. Returns the folder of the
    session's logs when this call started Ray, else None."""
    import ray

    # Ray 2.60's Parquet reader starts 32 footer-reading actors per read by default: tens of seconds on a small
    # machine for a handful of files. A few suffice for maple's shard counts; set the variable to change it.
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
    logs = None
    if not ray.is_initialized():
        address = run.ray_address or os.environ.get("RAY_ADDRESS")
        context = ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
                           ignore_reinit_error=True, **kwargs)
        session = context.address_info.get("session_dir")
        logs = os.path.join(session, "logs") if session else None
    data = ray.data.DataContext.get_current()
    # The same rows in the same order on every run of a job (training batches follow the read order): reproducible
    # numbers for the same config and seed, at the price of a little streaming slack.
    data.execution_options.preserve_order = True
    if quiet:
        data.enable_progress_bars = False
    return logs


def autoscaling() -> bool:
    """Whether an autoscaler runs for this Ray cluster: its groups may be at zero nodes until a job asks for them
    (cluster/*.yaml). Ray's monitor writes its status to the GCS on every cluster, a local one too; only an
    autoscaler adds its report."""
    import json

    import ray.experimental.internal_kv
    from ray._private import ray_constants

    status = ray.experimental.internal_kv._internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    return bool(status) and "autoscaler_report" in json.loads(status)


def cluster_capacity() -> dict[str, float]:
    """The resources the start-up checks count on: the Ray cluster's own, unless an autoscaler runs: then CPUs and
    GPUs count as unbounded and the autoscaler itself reports work that no node type can run."""
    import ray

    resources = dict(ray.cluster_resources())
    if autoscaling():
        resources.update(CPU=math.inf, GPU=math.inf)
    return resources


def check_accelerator(accelerator_type: str | None, key: str, resources: dict[str, float]) -> None:
    """Work pinned to one GPU type (`accelerator_type:<name>`, which Ray puts on a node with that GPU) on a cluster
    with no such node and no autoscaler to start one would wait forever: refuse it, naming the types there are."""
    if not accelerator_type or autoscaling() or resources.get(f"accelerator_type:{accelerator_type}", 0) > 0:
        return
    there = sorted(k.removeprefix("accelerator_type:") for k in resources if k.startswith("accelerator_type:"))
    raise SetupError(f"{key}={accelerator_type}: no node of this Ray cluster has that GPU (it has "
                     f"{', '.join(there) or 'no accelerator type'}); set {key} to one of those, or leave it unset")


def cluster_gpus() -> float:
    """The GPUs of the Ray cluster this process has joined."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))
