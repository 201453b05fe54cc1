from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from conf import load_config, to_object
from conf.schema import CohortConfig, ModelConfig, PrivacyConfig


def test_experiment_and_overrides_compose() -> None:
    cfg = load_config("tiny", "privacy=dp_sgd cohort.n_sites=4 seed=7")
    assert cfg.name == "tiny"
    assert cfg.privacy.mode == "dp_sgd"
    assert cfg.cohort.n_sites == 4
    assert cfg.seed == 7
    assert cfg.run_dir == "runs/tiny"


def test_paper_experiment_selects_paper_model() -> None:
    cfg = load_config("paper")
    assert cfg.data.image_size == 256
    assert list(cfg.model.unet_channels) == [128, 256, 512]
    assert cfg.cohort.voxel_size_mm == 1.0


def test_overrides_as_list_and_string_agree() -> None:
    a = load_config("tiny", "federation.rounds_ae=5 model.variant=g2i")
    b = load_config("tiny", ["federation.rounds_ae=5", "model.variant=g2i"])
    assert a == b


def test_groups_are_typed_dataclasses() -> None:
    cfg = load_config("tiny")
    assert isinstance(to_object(cfg.cohort), CohortConfig)
    assert isinstance(to_object(cfg.model), ModelConfig)
    assert isinstance(to_object(cfg.privacy), PrivacyConfig)


def test_unknown_key_is_rejected() -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        load_config("tiny", "cohort.n_sitez=4")


def test_wrong_type_is_rejected() -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)):
        load_config("tiny", "cohort.n_sites=many")


def test_simulate_root() -> None:
    cfg = load_config(config_name="simulate", overrides="output_dir=/tmp/x seed=3 cohort=small")
    assert cfg.output_dir == "/tmp/x" and cfg.seed == 3
    assert cfg.cohort.voxel_size_mm == 4.0
