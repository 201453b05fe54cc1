"""Hydra configuration of G2I-Fed: schemas, YAML groups and the one loader everyone uses."""

from typing import Any

from conf.schema import (
    CohortConfig,
    Config,
    DataConfig,
    FederationConfig,
    ModelConfig,
    PrivacyConfig,
    QCConfig,
    SimulateConfig,
    TrainConfig,
)

__all__ = [
    "CohortConfig",
    "Config",
    "DataConfig",
    "FederationConfig",
    "ModelConfig",
    "PrivacyConfig",
    "QCConfig",
    "SimulateConfig",
    "TrainConfig",
    "config_dir",
    "load_config",
    "parse_overrides",
    "to_object",
]

_LOADER = {"config_dir", "load_config", "parse_overrides", "to_object"}


def __getattr__(name: str) -> Any:
    # Hydra is imported on first use of the loader, not by every user of the schemas.
    if name in _LOADER:
        from conf import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'conf' has no attribute {name!r}")
