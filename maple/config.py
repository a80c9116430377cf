"""One config system: typed sections (pydantic, unknown keys forbidden) loaded from a YAML recipe plus
command-line overrides (`train.lr=1e-4`).

Each section lives beside the code it configures (`maple/<package>/config.py`) and is composed here into `Config`,
so one recipe file drives the whole pipeline. This module sits above every package it composes: only the
entrypoints (jobs/, serve/, `maple.runtime`) import it, and they hand each component its own section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from maple.data.config import DataConfig, WorldConfig
from maple.eval.config import EvalConfig
from maple.judge.config import JudgeConfig
from maple.mining.config import MineConfig
from maple.models.config import ModelConfig, RerankerConfig
from maple.rewrite.config import RewriteConfig
from maple.section import RunConfig, Section
from maple.serving.config import ServeConfig
from maple.train.config import TrainConfig


class CurriculumStage(Section):
    """One stage of the variants' training order (`demo.curriculum`): `steps` on scenes of the world narrowed to
    `min_objects`..`max_objects` objects and to the `relations` named (None: the world's own)."""

    steps: int = Field(gt=0)
    min_objects: int | None = Field(None, ge=1)
    max_objects: int | None = Field(None, ge=1)
    relations: list[str] | None = None


class DemoConfig(Section):
    """The main job's ablation (`maple demo`): variants × seeds on the same data and steps."""

    seeds: int = 3
    variants: list[str] = ["infonce", "negclip", "hard_negatives", "soft_label", "rpa", "full"]
    reranker: bool = True  # also report "full + reranker" (retrieve-then-rerank over the full variant)
    baseline_steps: int = 150  # InfoNCE warm-up on plain pairs; its embedder mines, every variant starts from it
    variant_steps: int = 150
    # The variants' training order: stages of narrowed worlds, each with its own scenes, mined and judged, each stage
    # training from the one before. Empty: `variant_steps` on the world. A measured case (docs/demo.md): relations
    # are learnt when one axis (above/below, two objects) comes first, and stay at chance otherwise.
    curriculum: list[CurriculumStage] = Field(default_factory=list)
    variant_init: Literal["baseline", "scratch"] = "baseline"  # where each variant's training starts
    rpa: Literal["pairwise", "listwise"] = "listwise"  # the RPA form of the variants that use it
    rpa_weight: float = 1.0  # λ of those variants
    # γ of the soft-label term in the variants that use it (UniME-V2's τ = 0.02 makes the reference judge's coarse
    # scores near one-hot targets; docs/demo.md has the sweep that chose it).
    kl_weight: float = 0.1
    judge_noise_sweep: list[float] = []  # flip rates of the reference judge for the noise study; empty: none
    serve: bool = False  # end by serving the best variant on 127.0.0.1
    verbose: bool = False  # the libraries' logs on the console too (default: <run.output_dir>/logs/demo.log)


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    world: WorldConfig = Field(default_factory=WorldConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    mine: MineConfig = Field(default_factory=MineConfig)
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    reranker: RerankerConfig = Field(default_factory=RerankerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)

    @model_validator(mode="after")
    def _curriculum_narrows_the_world(self):
        for k, stage in enumerate(self.demo.curriculum):
            if stage.max_objects is not None and stage.max_objects > self.world.max_objects:
                raise ValueError(f"demo.curriculum[{k}].max_objects ({stage.max_objects}) is above "
                                 f"world.max_objects ({self.world.max_objects}): a stage narrows the world")
            if (stage.min_objects or self.world.min_objects) > (stage.max_objects or self.world.max_objects):
                raise ValueError(f"demo.curriculum[{k}]: min_objects is above max_objects (the world's where unset)")
            unknown = sorted(set(stage.relations or []) - set(self.world.relations))
            if unknown or stage.relations == []:
                raise ValueError(f"demo.curriculum[{k}].relations: {unknown or 'empty'}; a stage names some of "
                                 f"world.relations {self.world.relations}, or none of them for all")
        if self.demo.curriculum and self.demo.judge_noise_sweep:
            raise ValueError("demo.judge_noise_sweep mines and trains on the world alone; it does not combine with "
                             "demo.curriculum")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def with_overrides(self, *overrides: str) -> "Config":
        """A validated copy with `section.key=value` overrides applied (as on the command line)."""
        return _validated(self.model_dump(mode="json"), overrides, f"overrides {list(overrides)}")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=1e-4"` -> (["train", "lr"], 1e-4); the value is read as YAML (`[1, 2]`, `true`, `null`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    if isinstance(value, str):
        value = _yaml_float(value)
    return key.strip().split("."), value


def _yaml_float(value: str) -> Any:
    # YAML 1.1 reads "1e-4" as a string; users mean a number.
    try:
        return float(value) if any(c in value for c in "eE.") and value.lower() not in ("nan", "inf") else value
    except ValueError:
        return value


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def _normalise_numbers(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _normalise_numbers(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_normalise_numbers(v) for v in tree]
    if isinstance(tree, str):
        return _yaml_float(tree)
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (or the defaults when `path` is None), apply overrides, validate strictly."""
    source = str(path) if path else "<defaults>"
    tree: dict = {}
    if path:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return _validated(_normalise_numbers(tree), overrides, source)


def _validated(tree: dict, overrides: list[str] | tuple[str, ...], source: str) -> Config:
    """Apply `section.key=value` overrides to a config tree and validate it; errors name `source` and the key."""
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key {key!r}")
            elif not key:  # a rule across sections: its message names the keys
                problems.append(err["msg"].removeprefix("Value error, "))
            else:
                problems.append(f"key {key!r}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None
