"""The one local-training core: the centralized baseline and a federated site both call
``train_local``; nothing here knows Flower.

One call is one local run (all of centralized training, or one federated round at one site):
it builds the loader (its shuffling seeded from the run's stream), the AdamW optimiser
(restored from ``state_dir`` when the caller keeps optimiser state across rounds), the
optional EMA and, under DP-SGD, the Opacus wrapping with the site's accountant; then runs
``train_autoencoder`` or ``train_ldm`` and returns the trained weights and metrics.

Random streams: ``derive_seed(run_seed, site, phase, round)`` gives every (site, phase,
round) its own seed, so no two rounds or sites replay one stream (the noise and timesteps of
the diffusion loss, the loader's order, condition dropout). DP-SGD noise is drawn from a
separate generator seeded from the operating system's entropy (``privacy.make_private``),
never from a value the server sends.

Optimiser state across federated rounds (measured, see README "Training core"): each site
keeps its AdamW moments on its own disk (``state_dir``), keyed by phase, and applies them to
the new global weights; resetting them every round loses the moment estimates that a
centralized run keeps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from conf.schema import PrivacyConfig, TrainConfig
from g2i_models.autoencoder import PatchDiscriminator
from g2i_models.device import prepare_for_training
from g2i_models.privacy import (
    PrivacyLedger,
    finish_private,
    make_private,
    planned_steps,
    strip_private_prefix,
)
from g2i_models.train import snapshot, train_autoencoder, train_ldm
from g2i_models.trainable import freeze_all_but, parameter_share, trainable_names
from preprocessing.panel import APOE_COLUMN, APOE_E4_SNP

Phase = Literal["ae", "ldm"]


def derive_seed(run_seed: int, site: str, phase: str, round_: int) -> int:
    """A 63-bit seed of its own for one (run seed, site, phase, round)."""
    digest = hashlib.sha256(f"{int(run_seed)}|{site}|{phase}|{int(round_)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class LocalResult:
    """What one local run returns: trained weights (no Opacus prefix), EMA weights when an EMA
    was kept, and metrics (``num_examples``, ``steps``, losses, privacy spent)."""

    weights: dict[str, torch.Tensor]
    metrics: dict[str, float]
    ema_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    # The names of the parameters this run trained (``privacy.trainable``): what a site
    # sends back; the rest of ``weights`` is as the run received it.
    trained: list[str] = field(default_factory=list)


# The panel columns that encode APOE e4: the e4 count and its defining SNP.
APOE_E4_NAMES = (APOE_COLUMN, APOE_E4_SNP)


def panel_names(dataset: Dataset) -> list[str] | None:
    """The SNP names of a dataset's genotype columns (a pooled ``ConcatDataset``: its first
    part's), None when it does not name them."""
    while isinstance(dataset, ConcatDataset):
        dataset = dataset.datasets[0]
    names = getattr(dataset, "snp_names", None)
    return None if names is None else [str(n) for n in names]


def e4_columns_of(dataset: Dataset) -> list[int]:
    # g2i_eval.effects.apoe_columns is the strict form (raises when there is none).
    """Panel indices of the APOE e4 encodings of a dataset that names its SNPs, else none."""
    names = panel_names(dataset) or []
    return [i for i, name in enumerate(names) if name in APOE_E4_NAMES]


TRAINING_FIELDS = ("image", "genotypes", "label")


class TrainingItems(Dataset):
    """The tensors training reads (image, genotypes, label) of each item, nothing else: a
    subject ID never enters a batch, and Opacus can build the empty batch Poisson sampling
    sometimes draws (its collate supports tensors only; a string field made it raise)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.base[i]
        return {k: item[k] for k in TRAINING_FIELDS if k in item}


def make_loader(dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
    """Shuffled, full batches only, order seeded from the run's stream; items carry only
    the training tensors (``TrainingItems``)."""
    if len(dataset) == 0:
        raise ValueError("the training split is empty: nothing to train on")
    return DataLoader(
        TrainingItems(dataset),
        batch_size=min(batch_size, len(dataset)),
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )


def _optimizer_path(state_dir: Path | None, phase: Phase) -> Path | None:
    return None if state_dir is None else state_dir / f"optimizer-{phase}.pt"


def _restore_optimizer(opt: torch.optim.Optimizer, path: Path | None) -> bool:
    if path is None or not path.exists():
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError):  # another model shape: start the moments afresh
        return False
    return True


def _save_optimizer(opt: torch.optim.Optimizer, path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(opt.state_dict(), tmp)
    tmp.replace(path)


def train_local(
    phase: Phase,
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    *,
    ae: AutoencoderKL | None = None,
    scheduler: SchedulerMixin | None = None,
    cond_dropout: float = 0.0,
    genotype_dropout: float = 0.0,
    privacy: PrivacyConfig | None = None,
    ledger: PrivacyLedger | None = None,
    total_dp_steps: int = 0,
    state_dir: Path | None = None,
    proximal_mu: float = 0.0,
    ema: bool = False,
    discriminator: PatchDiscriminator | None = None,
    progress: bool = False,
) -> LocalResult:
    """Train ``model`` (the autoencoder for ``phase="ae"``, the ``ConditionalDenoiser`` with
    the frozen ``ae`` and ``scheduler`` for ``"ldm"``) on ``dataset`` for one local run of
    ``cfg``'s epochs / step cap of that phase.

    Args:
        seed: this run's stream (``derive_seed``); seeds torch's generator, the loader's order.
        privacy, ledger: DP-SGD when ``privacy.mode == "dp_sgd"``; the ledger accumulates the
            accountant's history (the caller saves it).
        total_dp_steps: DP steps over the whole training (for ``privacy.target_epsilon``).
        state_dir: where the optimiser's state is restored from and saved to (None = a fresh
            optimiser for this call).
        proximal_mu: FedProx term towards the weights ``model`` starts this run with.
        ema: keep an EMA of the weights over this run's steps (``cfg.ema_decay``).
    """
    if phase not in ("ae", "ldm"):
        raise ValueError(f"phase must be 'ae' or 'ldm', got {phase!r}")
    if phase == "ldm" and (ae is None or scheduler is None):
        raise ValueError("the LDM phase needs the frozen autoencoder and the noise scheduler")
    dp = privacy is not None and privacy.mode == "dp_sgd"
    if dp and ledger is None:
        raise ValueError("DP-SGD needs the site's privacy ledger")
    torch.manual_seed(seed)
    lr = cfg.lr_ae if phase == "ae" else cfg.lr_ldm
    epochs = cfg.ae_epochs if phase == "ae" else cfg.ldm_epochs
    max_steps = cfg.max_steps_ae if phase == "ae" else cfg.max_steps_ldm
    # The subset and the draws per example concern the denoiser (the autoencoder phase,
    # skipped after public pretraining, trains all of the autoencoder).
    subset_name = privacy.trainable if privacy is not None and phase == "ldm" else "all"
    draws = privacy.augment_multiplicity if privacy is not None and phase == "ldm" else 1
    trained = trainable_names(model, subset_name)
    freeze_all_but(model, trained)
    # Under DP-SGD the loader's batch is the expected Poisson batch: sample rate 1 / len.
    batch_size = privacy.expected_batch_size if dp and privacy.expected_batch_size else 0
    loader = make_loader(dataset, batch_size or cfg.batch_for(phase), seed)
    reference = snapshot(model) if proximal_mu > 0 else None
    model.to(device).train()
    prepare_for_training(cfg, model, ae, private=dp)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    opt_path = _optimizer_path(state_dir, phase)
    restored = _restore_optimizer(opt, opt_path)
    private = None
    if dp:
        steps = planned_steps(len(loader), epochs, max_steps)
        private = make_private(model, opt, loader, privacy, ledger, steps, total_dp_steps)
    ema_model = EMAModel(model.parameters(), decay=cfg.ema_decay) if ema else None
    history: list[dict[str, float]] = []
    common: dict[str, Any] = {
        "optimizer": private.optimizer if private else opt,
        "reference": reference,
        "proximal_mu": proximal_mu,
        "seed": seed,
        "history": history,
        "progress": progress,
    }
    run_loader = private.loader if private else loader
    if phase == "ae":
        # Opacus's wrapper exposes only forward(); encode()/decode() run the wrapped layers,
        # which carry its per-sample gradient hooks all the same.
        module = private.module._module if private else model
        metrics = train_autoencoder(
            module, run_loader, cfg, device, discriminator=discriminator, ema=ema_model, **common
        )
    else:
        module = private.module if private else model
        metrics = train_ldm(
            module,
            ae,
            scheduler,
            run_loader,
            cfg,
            device,
            cond_dropout=cond_dropout,
            genotype_dropout=genotype_dropout,
            draws=draws,
            ema=ema_model,
            **common,
        )
    _save_optimizer(opt, opt_path)
    metrics["optimizer-restored"] = float(restored)
    metrics["trained-share"] = parameter_share(model, trained)
    if private:
        finish_private(private, ledger)
        metrics.update(
            {
                "dp-noise-multiplier": private.noise_multiplier,
                "dp-sample-rate": private.sample_rate,
                "dp-steps": float(ledger.steps),
            }
        )
    weights = _weights(model)
    ema_weights = None
    if ema_model is not None:
        ema_weights = _ema_weights(model, ema_model)
    return LocalResult(weights, metrics, ema_weights, history, trained)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in strip_private_prefix(model.state_dict()).items()}


def _ema_weights(model: nn.Module, ema: EMAModel) -> dict[str, torch.Tensor]:
    """The model's state dict with its trainable parameters replaced by their EMA."""
    state = _weights(model)
    names = [n.removeprefix("_module.") for n, _ in model.named_parameters()]
    for name, shadow in zip(names, ema.shadow_params, strict=True):
        state[name] = shadow.detach().clone().to(state[name].dtype)
    return state


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    model.load_state_dict(dict(weights))
