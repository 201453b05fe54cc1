"""Compose the configuration with Hydra's Compose API.

The command-line tools and the Flower apps call the same function, so
``flwr run . --run-config "overrides='privacy=dp_sgd'"`` and
``g2i-train privacy=dp_sgd`` compose the same tree.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from conf.schema import register_configs


def config_dir() -> Path:
    """The folder holding ``config.yaml`` and the config groups."""
    return Path(__file__).resolve().parent


def parse_overrides(overrides: str | Sequence[str] | None) -> list[str]:
    """Turn ``"a=1 b='x y'"`` or a list of overrides into a list of Hydra overrides."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return shlex.split(overrides)
    return [str(o) for o in overrides]


def load_config(
    experiment: str | None = None,
    overrides: str | Sequence[str] | None = None,
    config_name: str = "config",
) -> DictConfig:
    """Compose a config.

    Args:
        experiment: a preset from ``conf/experiment`` (``tiny``, ``paper``); None keeps the
            default named in ``config.yaml``. Ignored for roots without experiments.
        overrides: Hydra overrides as one string or a list (``"cohort.n_sites=4 seed=1"``).
        config_name: the root config, ``config`` or ``simulate``.

    Returns:
        The composed config, read-only, with interpolations resolved.
    """
    register_configs()
    items = parse_overrides(overrides)
    if experiment and config_name == "config":
        items = [f"experiment={experiment}", *items]
    # Hydra keeps one global context; the Flower apps and tests compose many times.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=items)
    OmegaConf.resolve(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_object(node: DictConfig) -> Any:
    """The typed dataclass instance behind a composed node (``to_object(cfg.cohort)``)."""
    return OmegaConf.to_object(node)
