"""Typed run configs: dataclass schemas merged with OmegaConf, with errors that say what to fix.

A run config is built from, in order (later wins):
    the schema's defaults  <-  configs/base.yaml  <-  configs/trainer/<preset>.yaml (under `trainer:`)
    <-  configs/<paper>/<name>.yaml  <-  command-line `key=value` overrides.
Each source is merged on its own so an error names the file (or the command line) it came from.
The result is converted to real dataclasses, so every `__post_init__` check runs before any work starts.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from experiments import papers

CONFIG_DIR = Path(__file__).parent / "configs"
TRAINER_PRESETS = ("cpu", "gpu", "multinode")


class ConfigError(ValueError):
    """A config that cannot run: names the source, the key and the value at fault."""


@dataclass
class TrainerConfig:
    """The Lightning Trainer arguments we expose; presets live in configs/trainer/*.yaml."""

    accelerator: str = "cpu"
    devices: Any = 1  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | ...
    precision: str = "32-true"
    max_steps: int = 100
    max_epochs: int = -1
    val_check_interval: Optional[float] = None
    check_val_every_n_epoch: Optional[int] = 1
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    limit_test_batches: Optional[float] = None
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    deterministic: bool = True
    enable_progress_bar: bool = True
    checkpoint_every_n_steps: int = 50  # last.ckpt is refreshed this often (and at the end of fit)

    def __post_init__(self):
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"trainer.max_steps: {self.max_steps} must be positive or -1")
        if self.num_nodes < 1:
            raise ConfigError(f"trainer.num_nodes: {self.num_nodes} must be >= 1")
        if self.checkpoint_every_n_steps < 1:
            raise ConfigError(f"trainer.checkpoint_every_n_steps: {self.checkpoint_every_n_steps} must be >= 1")

    def lightning_kwargs(self) -> dict:
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        kwargs.pop("checkpoint_every_n_steps")
        return kwargs


@dataclass
class RunConfigBase:
    """Keys every run has; `data` and `model` come from the paper (see `schema_for`)."""

    exp: str = ""  # <paper>/<name>, filled in by `load`
    seed: int = 0  # same seed + same config on a CPU: same weights
    defaults_trainer: str = "cpu"  # which configs/trainer/<preset>.yaml to start from
    stages: list = field(default_factory=list)  # a pipeline: experiments fitted in order, each from the last's weights
    init_from: Optional[str] = None  # a checkpoint whose weights start this run (strict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self):
        if self.defaults_trainer not in TRAINER_PRESETS:
            raise ConfigError(f"defaults_trainer: {self.defaults_trainer!r} is not one of {TRAINER_PRESETS}")
        for stage in self.stages:
            if not isinstance(stage, str) or "/" not in stage:
                raise ConfigError(f"stages: {stage!r} is not an experiment name like 'ma2mba/tiny_stage1'")

    @property
    def paper(self) -> str:
        return self.exp.split("/", 1)[0]


def schema_for(paper: papers.Paper) -> type:
    """The run-config dataclass of one paper: the common keys plus its typed `data` and `model`."""
    return make_dataclass(
        f"RunConfig_{paper.name}",
        [
            ("data", paper.data_config, field(default_factory=paper.data_config)),
            ("model", paper.model_config, field(default_factory=paper.model_config)),
        ],
        bases=(RunConfigBase,),
    )


def experiment_path(exp: str) -> Path:
    path = CONFIG_DIR / f"{exp}.yaml"
    if "/" not in exp or not path.is_file():
        known = list_experiments()
        near = difflib.get_close_matches(exp, known, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(f"no experiment {exp!r} (looked for {path}){hint} Known: {', '.join(known)}")
    return path


def list_experiments() -> list[str]:
    return sorted(
        str(p.relative_to(CONFIG_DIR).with_suffix(""))
        for p in CONFIG_DIR.glob("*/*.yaml")
        if p.parent.name != "trainer"
    )


def load(exp: str, overrides: list[str] = (), extra: Optional[dict] = None) -> Any:
    """Merge and validate the config of experiment `exp` (`<paper>/<name>`); returns the typed dataclass.

    `extra` is one more layer of overrides between the experiment YAML and the command line
    (a pipeline passes its own keys down to its stages this way).
    """
    exp_file = experiment_path(exp)
    paper = papers.get(exp.split("/", 1)[0])
    schema = OmegaConf.structured(schema_for(paper))

    exp_yaml = _read_yaml(exp_file)
    cli = _parse_overrides(overrides)
    # The trainer preset is chosen by the experiment or the command line, so peek at both first.
    preset = OmegaConf.select(cli, "defaults_trainer") or (extra or {}).get("defaults_trainer") or OmegaConf.select(
        exp_yaml, "defaults_trainer"
    ) or "cpu"
    if preset not in TRAINER_PRESETS:
        raise ConfigError(f"defaults_trainer: {preset!r} is not one of {TRAINER_PRESETS}")

    layers = [
        (CONFIG_DIR / "base.yaml", _read_yaml(CONFIG_DIR / "base.yaml")),
        (CONFIG_DIR / "trainer" / f"{preset}.yaml", OmegaConf.create({"trainer": _read_yaml(CONFIG_DIR / "trainer" / f"{preset}.yaml")})),
        (exp_file, exp_yaml),
    ]
    if extra:
        layers.append(("the pipeline config", OmegaConf.create(extra)))
    layers.append(("the command line", cli))
    merged = schema
    for source, layer in layers:
        merged = _merge(merged, layer, source)
    merged.exp = exp
    try:
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a __post_init__ check of a paper's dataclass
        raise ConfigError(f"{exp}: {e}") from e


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _read_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(loaded).__name__}")
    return loaded


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if not re.match(r"^[A-Za-z_][\w.]*=", item):
            raise ConfigError(f"command line: {item!r} is not a key=value override (e.g. trainer.max_steps=10)")
    return OmegaConf.from_dotlist(list(overrides))


def _merge(base: DictConfig, layer: DictConfig, source) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except ConfigKeyError as e:
        raise ConfigError(_unknown_key_message(base, e, source)) from None
    except ValidationError as e:
        value = getattr(e, "value", None)
        key = e.full_key or e.key
        expected = _expected_type(base, key)
        raise ConfigError(f"{source}: key {key!r} has value {value!r}, expected {expected}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {e}") from None


def _unknown_key_message(base: DictConfig, err: ConfigKeyError, source) -> str:
    full_key = err.full_key or str(err.key)
    parent_key, _, leaf = full_key.rpartition(".")
    parent = OmegaConf.select(base, parent_key) if parent_key else base
    valid = list(parent.keys()) if isinstance(parent, DictConfig) else []
    near = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.5)
    prefix = f"{parent_key}." if parent_key else ""
    hint = f"; nearest valid: {', '.join(prefix + k for k in near)}" if near else ""
    return f"{source}: unknown config key {full_key!r}{hint} (valid under {parent_key or 'the top level'}: {', '.join(valid)})"


def _expected_type(base: DictConfig, key: str) -> str:
    parent_key, _, leaf = str(key).rpartition(".")
    parent = OmegaConf.select(base, parent_key) if parent_key else base
    try:
        obj_type = OmegaConf.get_type(parent)
        if obj_type is not None and is_dataclass(obj_type):
            for f in fields(obj_type):
                if f.name == leaf:
                    return getattr(f.type, "__name__", None) or str(f.type)
    except Exception:  # the type is only for the message; never mask the real error
        pass
    return "a value of the schema's type"
