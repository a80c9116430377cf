"""The base of every config section, the `run` section that every job and the training loop read, and the error a
check raises for a setting that cannot work.

Each package defines its own sections beside its code (`maple/<package>/config.py`); a component takes only its own
section. `maple.config.Config` composes them all, and only the entrypoints (jobs/, serve/) hold the whole `Config`.
"""

from pydantic import BaseModel, ConfigDict, Field


class SetupError(ValueError):
    """A setting that cannot work with these inputs or on this cluster, found before any work starts. The message is
    one sentence that names the key and the fix; the `maple` command prints it without a traceback."""


class Section(BaseModel):
    """Unknown keys are errors, not silently ignored typos; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class RunConfig(Section):
    """Where a job runs and where it writes."""

    name: str = "maple"
    output_dir: str = "runs/maple"
    seed: int = 0
    ray_address: str | None = None  # None: RAY_ADDRESS if set, else an embedded local cluster
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides
    mlflow_experiment: str = "maple"
    # Ray Data's cap on the logical CPUs / GPUs one job's datasets use and ask the cluster's autoscaler for
    # (`DataContext.execution_options.resource_limits`). Unset, Ray Data's autoscaler doubles its request while the
    # cluster is busy, and once the CPU group is at its max_workers it gets CPUs from any group, GPU nodes included
    # (docs/cluster.md, "Autoscaling from zero").
    data_max_cpus: float | None = Field(default=None, gt=0)
    data_max_gpus: float | None = Field(default=None, ge=0)
