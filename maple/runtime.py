"""What every entrypoint (jobs/, serve/) shares: the command line into a `Config`, and joining or starting Ray."""

from __future__ import annotations

import argparse
import logging
import os

from maple.config import Config, ConfigError, load_config
from maple.section import RunConfig


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
    if run.data_max_cpus is not None or run.data_max_gpus is not None:
        data.execution_options.resource_limits = data.execution_options.resource_limits.copy(
            cpu=run.data_max_cpus, gpu=run.data_max_gpus)
    if quiet:
        data.enable_progress_bars = False
    return logs


def cluster_gpus() -> float:
    """The GPUs of the Ray cluster this process has joined."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))
