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


def init_ray(run: RunConfig, **kwargs) -> None:
    """Join `run.ray_address` / RAY_ADDRESS when given (a cluster, or `ray job submit`); else start a local Ray."""
    import ray

    # Ray 2.60's Parquet reader starts 32 footer-reading actors per read by default: tens of seconds on a small
    # machine for a handful of files. A few suffice for maple's shard counts; set the variable to change it.
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
    if ray.is_initialized():
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        return
    address = run.ray_address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False, log_to_driver=True, ignore_reinit_error=True, **kwargs)
    # The same rows in the same order on every run of a job (training batches follow the read order): reproducible
    # numbers for the same config and seed, at the price of a little streaming slack.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
