"""The privacy ledger: epsilon accumulates across runs, the budget is enforced."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from conf import load_config, to_object
from conf.schema import PrivacyConfig
from g2i_models.privacy import (
    PrivacyBudgetExceeded,
    PrivacyLedger,
    finish_private,
    make_private,
    noise_for,
)


def _dp(**changes: object) -> PrivacyConfig:
    return replace(to_object(load_config("tiny", "privacy=dp_sgd").privacy), **changes)


def _one_run(ledger: PrivacyLedger, cfg: PrivacyConfig, steps: int = 4) -> None:
    model = torch.nn.Linear(3, 1)
    loader = DataLoader(TensorDataset(torch.randn(32, 3), torch.randn(32, 1)), batch_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_private(model, opt, loader, cfg, ledger, planned_steps=steps, total_steps=100)
    for k, (x, y) in enumerate(run.loader):
        if k == steps:
            break
        if len(x) == 0:
            continue
        run.optimizer.zero_grad()
        torch.nn.functional.mse_loss(run.module(x), y).backward()
        run.optimizer.step()
    finish_private(run, ledger)


def test_epsilon_accumulates_across_runs_and_survives_disk(tmp_path: Path) -> None:
    cfg = _dp(epsilon_budget=0.0)
    ledger = PrivacyLedger()
    _one_run(ledger, cfg)
    eps1 = ledger.epsilon(cfg.delta)
    ledger.save(tmp_path / "ledger.json")
    again = PrivacyLedger.load(tmp_path / "ledger.json")
    _one_run(again, cfg)
    eps2 = again.epsilon(cfg.delta)
    assert 0 < eps1 < eps2
    # Same as one accountant that saw every step (Opacus's own bookkeeping).
    acc = RDPAccountant()
    acc.history = list(again.history)
    assert eps2 == pytest.approx(acc.get_epsilon(cfg.delta))
    assert again.steps == sum(h[2] for h in again.history) > 0


def test_budget_refuses_the_run_that_would_pass_it() -> None:
    cfg = _dp(epsilon_budget=1e9)
    ledger = PrivacyLedger()
    _one_run(ledger, cfg)
    spent = ledger.epsilon(cfg.delta)
    tight = _dp(epsilon_budget=spent * 1.01)
    with pytest.raises(PrivacyBudgetExceeded, match="past the budget"):
        _one_run(ledger, tight)
    assert ledger.epsilon(cfg.delta) == spent  # nothing was spent by the refused run


def test_target_epsilon_sets_the_noise() -> None:
    cfg = _dp(target_epsilon=3.0)
    sigma = noise_for(cfg, sample_rate=0.25, total_steps=40)
    eps = PrivacyLedger([(sigma, 0.25, 40)]).epsilon(cfg.delta)
    assert eps == pytest.approx(3.0, rel=0.05)
    assert noise_for(_dp(noise_multiplier=1.3), 0.25, 40) == 1.3


def test_an_empty_poisson_batch_is_a_noise_step_the_accountant_counts() -> None:
    """Poisson sampling at rate q draws an empty batch with probability (1 - q)^N, also as a
    run's very first batch (Opacus then built the empty batch from an item's dict keys and
    raised TypeError). An empty batch must still be a DP-SGD step: noise on the weights and
    one step in the accountant, or the update would show that nobody was sampled."""
    from g2i_models.autoencoder import build_autoencoder
    from g2i_models.datasets import SyntheticSliceDataset
    from g2i_models.local_training import make_loader
    from g2i_models.train import train_autoencoder
    from tests.g2i_models.tiny import IMAGE_SIZE, tiny_model_config, tiny_train_config

    torch.manual_seed(0)
    ae = build_autoencoder(tiny_model_config(), IMAGE_SIZE)
    data = SyntheticSliceDataset(8, IMAGE_SIZE, n_snps=12, seed=0)  # dict items, a string ID
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-3)
    ledger = PrivacyLedger()
    cfg = _dp(epsilon_budget=0.0, noise_multiplier=1.0)
    run = make_private(ae, opt, make_loader(data, 4, 0), cfg, ledger, 3, 3)
    run.loader.batch_sampler.sample_rate = 1e-12  # every batch comes up empty
    batch = next(iter(run.loader))
    assert batch["image"].shape == (0, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["label"].dtype == data[0]["label"].dtype
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    train = tiny_train_config(max_steps_ae=3, ae_epochs=3)
    metrics = train_autoencoder(
        run.module._module, run.loader, train, torch.device("cpu"), optimizer=run.optimizer
    )
    finish_private(run, ledger)
    moved = max(float((v - before[k]).abs().max()) for k, v in ae.state_dict().items())
    assert moved > 0, "an empty batch left the weights untouched: no noise step"
    assert ledger.steps == 3
    assert metrics["num_examples"] == 0 and metrics["steps"] == 3
