"""The base of every config section, the `run` section that every job and the training loop read, and the error a
check raises for a setting that cannot work.

Each package defines its own sections beside its code (`maple/<package>/config.py`); a component takes only its own
section. `maple.config.Config` composes them all, and only the entrypoints (jobs/, serve/) hold the whole `Config`.
"""

from pydantic import BaseModel, ConfigDict


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
