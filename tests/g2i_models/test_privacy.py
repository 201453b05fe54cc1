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
