"""The registry of papers: each `experiments/papers/<name>.py` defines `PAPER`, wiring its model and data.

experiments/ is the only place that knows both a LightningModule and a DataModule; the papers' own
folders never import each other or this package.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Paper:
    name: str
    model_config: type  # dataclass: the `model:` section of a run config
    data_config: type  # dataclass: the `data:` section
    build: Callable[[Any], tuple[Any, Any]]  # typed run config -> (LightningModule, LightningDataModule)


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> Paper:
    if name not in available():
        raise KeyError(f"unknown paper {name!r}; known: {', '.join(available()) or 'none yet'}")
    return importlib.import_module(f"{__name__}.{name}").PAPER
