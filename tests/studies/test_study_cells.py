"""The DP cells of the CPU study preset: declared for the federated G2I+ cell only, off by
default, and made from the public model the study names."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf import load_config, to_object
from conf.schema import StudyConfig
from studies.study import Cell, cell_overrides, study_cells


def _cpu(*overrides: str) -> StudyConfig:
    cfg = load_config(config_name="study", overrides=["study=cpu", *overrides])
    return to_object(cfg.study)


def test_the_cpu_preset_runs_no_dp_cell_by_default() -> None:
    assert all(c.privacy == "none" for c in study_cells(_cpu()))


def test_dp_cells_are_the_federated_g2i_plus_fine_tuning_a_public_model(tmp_path: Path) -> None:
    study = _cpu("study.privacy=[none,dp_sgd]", f"study.pretrained={tmp_path}")
    dp = [c for c in study_cells(study) if c.privacy != "none"]
    assert dp == [Cell("g2i_plus", "federated", "dp_sgd")]
    items = cell_overrides(dp[0], study, tmp_path, tmp_path / "run")
    cfg = load_config(study.experiment, items)
    assert cfg.model.pretrained == str(tmp_path.resolve())
    assert cfg.privacy.mode == "dp_sgd" and cfg.privacy.trainable == "conditioning"
    assert cfg.privacy.augment_multiplicity > 1 and cfg.privacy.expected_batch_size > 8
    assert 0 < cfg.privacy.target_epsilon <= cfg.privacy.epsilon_budget <= 8
    assert cfg.train.max_steps_ldm == 40  # the DP cell's own step cap wins


def test_dp_fine_tuning_without_a_public_model_is_refused() -> None:
    with pytest.raises(ValueError, match="g2i-pretrain"):
        study_cells(_cpu("study.privacy=[none,dp_sgd]"))


def test_the_cpu_preset_federates_with_a_server_momentum_and_dp_with_fedavg(tmp_path) -> None:
    """The federated cells of the CPU preset step the server with FedAvgM at momentum 0.5
    (README: FedAvg's federated G2I+ expressed its conditions too weakly); the DP cell keeps
    the FedAvg its recipe was measured with."""
    study = _cpu("study.privacy=[none,dp_sgd]", f"study.pretrained={tmp_path}")
    cells = {c: cell_overrides(c, study, tmp_path, tmp_path / "run") for c in study_cells(study)}
    for cell, items in cells.items():
        fed = load_config(study.experiment, items).federation
        if cell.privacy == "none":
            assert (fed.strategy, fed.server_momentum) == ("FedAvgM", 0.5), cell
        else:
            assert fed.strategy == "FedAvg", cell
