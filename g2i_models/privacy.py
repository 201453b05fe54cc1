"""Local DP-SGD with Opacus, with a privacy accountant that lives across rounds and phases.

Opacus's own examples create a new ``PrivacyEngine`` per round, so the epsilon they report
covers one round only. Here the RDP accountant's history (noise multiplier, sample rate,
steps) is loaded before every local training run and saved after it, so the epsilon a site
reports is what it has spent since the federation started, over every round of both phases.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader

from conf.schema import PrivacyConfig


class PrivacyBudgetExceeded(RuntimeError):
    """A site refuses to train because the next round would pass its epsilon budget."""


@dataclass
class PrivacyLedger:
    """One site's privacy spend: the DP-SGD accountant's history (noise_multiplier,
    sample_rate, steps) per run, and the Gaussian count releases (noise multiplier, what was
    released; ``client.count_release``). Both compose in one RDP accountant."""

    history: list[tuple[float, float, int]] = field(default_factory=list)
    releases: list[tuple[float, str]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        p = Path(path)
        if not p.exists():
            return cls()
        state = json.loads(p.read_text())
        return cls(
            [tuple(h) for h in state["history"]],
            [(float(z), str(kind)) for z, kind in state.get("releases", [])],
        )

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({"history": self.history, "releases": self.releases}) + "\n")
        tmp.replace(p)

    def epsilon(self, delta: float, extra: tuple[float, float, int] | None = None) -> float:
        """Epsilon spent (RDP accountant), optionally after one more planned run. A count
        release is one Gaussian mechanism: a step at sample rate 1."""
        history = [*self.history, *((z, 1.0, 1) for z, _ in self.releases)]
        history += [extra] if extra else []
        if not history:
            return 0.0
        acc = RDPAccountant()
        acc.history = [tuple(h) for h in history]
        return float(acc.get_epsilon(delta))

    @property
    def steps(self) -> int:
        """DP-SGD steps (count releases not included)."""
        return int(sum(h[2] for h in self.history))


def batches_per_epoch(n_examples: int, batch_size: int) -> int:
    """Full batches in one pass over ``n_examples`` (at least 1; a batch larger than the data
    is the data)."""
    return max(1, n_examples // max(1, min(batch_size, n_examples)))


def planned_steps(batches_per_epoch: int, epochs: int, max_steps: int) -> int:
    """Optimiser steps of one local run: ``epochs`` passes, capped by ``max_steps`` when > 0."""
    steps = epochs * batches_per_epoch
    return min(steps, max_steps) if max_steps > 0 else steps


def noise_for(cfg: PrivacyConfig, sample_rate: float, total_steps: int) -> float:
    """The noise multiplier: ``cfg.noise_multiplier``, or the one that reaches
    ``cfg.target_epsilon`` after ``total_steps`` steps at ``sample_rate`` (all rounds)."""
    if cfg.target_epsilon > 0:
        return float(
            get_noise_multiplier(
                target_epsilon=cfg.target_epsilon,
                target_delta=cfg.delta,
                sample_rate=sample_rate,
                steps=total_steps,
                accountant="rdp",
            )
        )
    return float(cfg.noise_multiplier)


@dataclass
class PrivateRun:
    """What ``make_private`` returns: the wrapped model, optimiser and Poisson loader."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    engine: PrivacyEngine
    noise_multiplier: float
    sample_rate: float


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    cfg: PrivacyConfig,
    ledger: PrivacyLedger,
    planned_steps: int,
    total_steps: int,
) -> PrivateRun:
    """Wrap for DP-SGD, refusing when the run would pass ``cfg.epsilon_budget``.

    Args:
        planned_steps: steps of this local run (for the budget check).
        total_steps: steps over the whole federation (for ``cfg.target_epsilon``).
    """
    sample_rate = 1.0 / len(loader)
    sigma = noise_for(cfg, sample_rate, max(total_steps, planned_steps))
    if cfg.epsilon_budget > 0:
        after = ledger.epsilon(cfg.delta, (sigma, sample_rate, planned_steps))
        if after > cfg.epsilon_budget:
            spent = ledger.epsilon(cfg.delta)
            raise PrivacyBudgetExceeded(
                f"privacy budget: {planned_steps} more DP-SGD steps would take epsilon from "
                f"{spent:.3f} to {after:.3f}, past the budget of {cfg.epsilon_budget} "
                f"(delta {cfg.delta})"
            )
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = [tuple(h) for h in ledger.history]
    # Opacus's secure mode needs torchcsprng (not installable here); its Poisson sampler
    # reads ``secure_rng`` whatever the mode, so it gets a secret generator of its own.
    engine.secure_rng = secret_generator()
    module, opt, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=cfg.max_grad_norm,
        poisson_sampling=True,
        # The noise and the Poisson sampling come from the operating system's entropy, not
        # from torch's global generator, which the run's (server-known) seed has seeded:
        # anyone who can rebuild the noise can subtract it.
        noise_generator=secret_generator(),
    )
    dp_loader.collate_fn = CollateWithEmpty(loader.collate_fn, loader.dataset[0])
    return PrivateRun(module, opt, dp_loader, engine, sigma, sample_rate)


class CollateWithEmpty:
    """The loader's collate, and for the empty batch Poisson sampling draws now and then
    (probability (1 - q)^N), zero-length tensors shaped and typed like the dataset's items
    (a dict for dict items, a list for tuple items).

    Opacus's own empty-batch collate copies the first batch; when the very first batch of a
    run came up empty it iterated an item instead, which for dict items yields their keys
    and raised ``TypeError: zeros(): argument 'dtype' must be torch.dtype``.
    """

    def __init__(self, collate: Callable[[list[Any]], Any], template: Any) -> None:
        self.collate = collate
        self.template = template

    @staticmethod
    def _empty(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: CollateWithEmpty._empty(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [CollateWithEmpty._empty(v) for v in value]
        t = torch.as_tensor(value)
        return t.new_zeros((0, *t.shape))

    def __call__(self, batch: list[Any]) -> Any:
        if batch:
            return self.collate(batch)
        return self._empty(self.template)


def noise_only_step(optimizer: DPOptimizer) -> None:
    """The DP-SGD step of an empty Poisson batch: no gradient, only the Gaussian noise, and
    the accountant counts it. The model cannot run on a zero-length batch (diffusers'
    attention reshapes fail), so each parameter gets an empty per-sample gradient, the form
    Opacus's optimiser takes for an empty batch."""
    optimizer.zero_grad(set_to_none=True)
    for p in optimizer.params:
        p.grad_sample = p.new_zeros((0, *p.shape))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def secret_generator() -> torch.Generator:
    """A torch generator seeded from ``secrets`` (the OS's CSPRNG): a stream nobody else can
    reproduce, fresh on every call."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def finish_private(run: PrivateRun, ledger: PrivacyLedger) -> None:
    """Copy the accountant's history (now including this run) back into the ledger."""
    ledger.history = [tuple(h) for h in run.engine.accountant.history]


def strip_private_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dict of an Opacus-wrapped module with the ``_module.`` prefix removed."""
    return {k.removeprefix("_module."): v for k, v in state.items()}
