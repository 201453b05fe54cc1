"""Hydra configuration of G2I-Fed: schemas, YAML groups and the one loader everyone uses."""

from conf.loader import config_dir, load_config, parse_overrides, to_object
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
