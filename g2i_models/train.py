"""Training and evaluation steps as plain functions: the centralized CLI and a federated
client call the same ones (one call = one local training run, e.g. one federated round).

Each returns metrics as floats (``num_examples`` included) and can append per-step records to
a ``history`` list for loss curves. Optimiser state is local to a call unless an optimiser is
passed in (Opacus: pass the ``make_private`` model, optimiser and loader).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.training_utils import EMAModel
from opacus.optimizers import DPOptimizer
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from tqdm.auto import tqdm

from conf.schema import TrainConfig
from g2i_models.autoencoder import (
    PatchDiscriminator,
    autoencoder_loss,
    decode_latents,
    encode_latents,
    hinge_d_loss,
)
from g2i_models.device import autocast, autocast_dtype, seed_everything
from g2i_models.diffusion import diffusion_loss, diffusion_target
from g2i_models.privacy import noise_only_step

Batch = Mapping[str, Any]


def _strip_wrapper(name: str) -> str:
    """Parameter name without Opacus's ``_module.`` prefix."""
    return name.removeprefix("_module.")


def proximal_term(
    model: nn.Module, reference: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx: (mu / 2) * sum ||w - w_ref||^2 over trainable parameters named in reference."""
    terms = [
        (p - reference[_strip_wrapper(n)].to(p.device, p.dtype)).pow(2).sum()
        for n, p in model.named_parameters()
        if p.requires_grad and _strip_wrapper(n) in reference
    ]
    if not terms:
        raise ValueError("proximal term: no parameter of the model is named in the reference")
    return 0.5 * mu * torch.stack(terms).sum()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copy of the trainable parameters (the FedProx reference of a round)."""
    return {
        _strip_wrapper(n): p.detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def _run(
    loader: Iterable[Batch],
    epochs: int,
    max_steps: int,
    step: Callable[[Batch], dict[str, float]],
    history: list[dict[str, float]] | None,
    progress: bool,
    desc: str,
    max_seconds: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, float]:
    """Call ``step`` on every batch for ``epochs`` (at most ``max_steps`` > 0 steps, and no
    step started after ``max_seconds`` > 0 of wall time) and average the returned parts
    weighted by batch size.

    An empty batch (Poisson sampling under DP-SGD draws one now and then) is still a step
    when ``optimizer`` is Opacus's: its noise is added and the accountant counts it, as the
    DP-SGD analysis assumes; skipping it would tell the server that nobody was sampled."""
    start = time.perf_counter()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # parts such as the adversarial terms start late
    n_seen, steps = 0, 0
    total = epochs * len(loader) if isinstance(loader, Sized) else None
    if max_steps > 0:
        total = max_steps if total is None else min(total, max_steps)
    bar = tqdm(total=total, disable=not progress, desc=desc)
    for epoch in range(epochs):
        for batch in loader:
            b = len(batch["image"])
            if b == 0:
                if isinstance(optimizer, DPOptimizer):
                    noise_only_step(optimizer)
                    steps += 1
                    bar.update(1)
                    if 0 < max_steps <= steps:
                        break
                continue
            parts = step(batch)
            n_seen += b
            steps += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * b
                counts[k] = counts.get(k, 0) + b
            if history is not None:
                history.append({"step": float(len(history)), "epoch": float(epoch), **parts})
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
            out_of_time = 0 < max_seconds <= time.perf_counter() - start
            if 0 < max_steps <= steps or out_of_time:
                break
        if 0 < max_steps <= steps or 0 < max_seconds <= time.perf_counter() - start:
            break
    bar.close()
    if steps == 0:
        raise ValueError(f"{desc}: the data loader yielded no batch")
    metrics = {k: v / counts[k] for k, v in sums.items()}
    metrics.update(
        num_examples=float(n_seen), steps=float(steps), seconds=time.perf_counter() - start
    )
    return metrics


def grad_scaler(
    device: torch.device, mixed_precision: str, optimizer: torch.optim.Optimizer
) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast, whose small gradients underflow; bf16 and fp32 need
    none (a disabled scaler is a no-op). Not with DP-SGD, whose optimiser clips per sample."""
    fp16 = autocast_dtype(device, mixed_precision) == torch.float16
    enabled = fp16 and not isinstance(optimizer, DPOptimizer)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def fold_draws(optimizer: DPOptimizer, draws: int) -> None:
    """Per-sample gradients of B * ``draws`` rows (``draws`` consecutive rows per example)
    -> B per-example gradients, the mean over each example's rows: one example is one
    per-sample gradient, clipped once (augmentation multiplicity). Opacus's "mean" reduction
    scales each row's gradient to that row's own loss, so the mean is the gradient of the
    example's mean loss."""
    for p in optimizer.params:
        g = getattr(p, "grad_sample", None)
        if g is None:
            continue
        if isinstance(g, list):  # one backward per step here: a single tensor
            g = torch.cat(g)
        if g.shape[0] % draws:
            raise ValueError(f"{g.shape[0]} per-sample gradients are not {draws} per example")
        p.grad_sample = g.view(g.shape[0] // draws, draws, *g.shape[1:]).mean(dim=1)


def _optimise(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    grad_clip: float,
    scaler: torch.amp.GradScaler | None = None,
    draws: int = 1,
) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaled = scaler is not None and scaler.is_enabled()
    (scaler.scale(loss) if scaled else loss).backward()
    if draws > 1 and isinstance(optimizer, DPOptimizer):
        fold_draws(optimizer, draws)
    # DP-SGD clips per sample inside the optimiser; clipping the sum again would bias it.
    if grad_clip > 0 and not isinstance(optimizer, DPOptimizer):
        if scaled:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaled:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train_autoencoder(
    ae: AutoencoderKL,
    loader: Iterable[Batch],
    cfg: TrainConfig,
    device: torch.device,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    discriminator: PatchDiscriminator | None = None,
    ema: EMAModel | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
    seed: int | None = None,
    history: list[dict[str, float]] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train the autoencoder on image batches (B, 1, H, W) for ``cfg.ae_epochs``.

    Loss: L1 + cfg.kl_weight * KL (+ cfg.adv_weight * patch-adversarial term once
    ``cfg.adv_start_step`` steps are done, which needs ``discriminator``), plus the FedProx
    term when ``reference`` and ``proximal_mu`` > 0 are given. ``ae`` may be an Opacus
    wrapper; then pass its DP ``optimizer`` (DP-SGD of a federated site).
    """
    if cfg.adv_weight > 0 and discriminator is None:
        raise ValueError("train.adv_weight > 0 needs a PatchDiscriminator (discriminator=...)")
    if seed is not None:
        seed_everything(seed)
    ae.to(device).train()
    opt = optimizer or torch.optim.AdamW(
        ae.parameters(), lr=cfg.lr_ae, weight_decay=cfg.weight_decay
    )
    opt_d = None
    if discriminator is not None and cfg.adv_weight > 0:
        discriminator.to(device).train()
        opt_d = torch.optim.AdamW(discriminator.parameters(), lr=cfg.lr_ae, betas=(0.5, 0.9))
    scaler = grad_scaler(device, cfg.mixed_precision, opt)
    scaler_d = None if opt_d is None else grad_scaler(device, cfg.mixed_precision, opt_d)
    done = 0

    def step(batch: Batch) -> dict[str, float]:
        nonlocal done
        x = batch["image"].to(device, non_blocking=True)
        with autocast(device, cfg.mixed_precision):
            loss, recon, parts = autoencoder_loss(ae, x, cfg.kl_weight)
            adversarial = opt_d is not None and done >= cfg.adv_start_step
            if adversarial:
                g_loss = -discriminator(recon).mean()
                loss = loss + cfg.adv_weight * g_loss
                parts["g_adv"] = g_loss.item()
            if reference is not None and proximal_mu > 0:
                loss = loss + proximal_term(ae, reference, proximal_mu)
        _optimise(ae, opt, loss, cfg.grad_clip, scaler)
        if adversarial:
            with autocast(device, cfg.mixed_precision):
                d_loss = hinge_d_loss(discriminator(2 * x - 1), discriminator(recon.detach()))
            _optimise(discriminator, opt_d, d_loss, cfg.grad_clip, scaler_d)
            parts["d_adv"] = d_loss.item()
        if ema is not None:
            ema.step(ae.parameters())
        done += 1
        return {"loss": loss.item(), **parts}

    return _run(
        loader,
        cfg.ae_epochs,
        cfg.max_steps_ae,
        step,
        history,
        progress,
        "autoencoder",
        cfg.max_seconds_ae,
        opt,
    )


def train_ldm(
    denoiser: nn.Module,
    ae: AutoencoderKL,
    scheduler: SchedulerMixin,
    loader: Iterable[Batch],
    cfg: TrainConfig,
    device: torch.device,
    *,
    cond_dropout: float = 0.0,
    draws: int = 1,
    genotype_dropout: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
    ema: EMAModel | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
    seed: int | None = None,
    history: list[dict[str, float]] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train SNP encoder + UNet with the frozen autoencoder for ``cfg.ldm_epochs``.

    Per batch: images (B, 1, H, W) -> scaled latents (B, c, H/4, W/4) -> add noise at random
    t -> predict -> MSE by ``prediction_type`` (eq. 11), conditions dropped with probability
    ``cond_dropout`` (classifier-free guidance), the genotype alone with probability
    ``genotype_dropout`` (genotype guidance); ``draws`` (noise, t) draws per image, averaged
    per image (under DP-SGD before clipping, ``fold_draws``). ``denoiser`` may be an Opacus
    wrapper of a ``ConditionalDenoiser``; then pass its DP optimiser. ``ema`` is updated after
    every step. Only the parameters that require gradients train.
    """
    if seed is not None:
        seed_everything(seed)
    ae.to(device).eval().requires_grad_(False)
    denoiser.to(device).train()
    opt = optimizer or torch.optim.AdamW(
        [p for p in denoiser.parameters() if p.requires_grad],
        lr=cfg.lr_ldm,
        weight_decay=cfg.weight_decay,
    )
    scaler = grad_scaler(device, cfg.mixed_precision, opt)

    def step(batch: Batch) -> dict[str, float]:
        x = batch["image"].to(device, non_blocking=True)
        genotypes = batch["genotypes"].to(device)
        labels = batch["label"].to(device)
        with autocast(device, cfg.mixed_precision):
            with torch.no_grad():
                z0 = encode_latents(ae, x).float()
            mse = diffusion_loss(
                denoiser,
                scheduler,
                z0,
                genotypes,
                labels,
                cond_dropout,
                draws=draws,
                genotype_dropout=genotype_dropout,
                snr_gamma=cfg.min_snr_gamma,
                timestep_power=cfg.timestep_power,
            )
            loss = mse
            if reference is not None and proximal_mu > 0:
                loss = loss + proximal_term(denoiser, reference, proximal_mu)
        _optimise(denoiser, opt, loss, cfg.grad_clip, scaler, draws)
        if ema is not None:
            ema.step(denoiser.parameters())
        return {"loss": loss.item(), "mse": mse.item()}

    return _run(
        loader,
        cfg.ldm_epochs,
        cfg.max_steps_ldm,
        step,
        history,
        progress,
        "ldm",
        cfg.max_seconds_ldm,
        opt,
    )


@torch.no_grad()
def evaluate_autoencoder(
    ae: AutoencoderKL, loader: Iterable[Batch], device: torch.device
) -> dict[str, float]:
    """Held-out reconstruction quality through the latent (posterior mode): L1, PSNR, SSIM."""
    ae.to(device).eval()
    sums = {"l1": 0.0, "psnr": 0.0, "ssim": 0.0}
    n = 0
    for batch in loader:
        x = batch["image"].to(device)
        z = encode_latents(ae, x, mode=True)
        recon = decode_latents(ae, z)
        b = x.shape[0]
        sums["l1"] += (recon - x).abs().mean().item() * b
        sums["psnr"] += peak_signal_noise_ratio(recon, x, data_range=1.0).item() * b
        sums["ssim"] += structural_similarity_index_measure(recon, x, data_range=1.0).item() * b
        n += b
    if n == 0:
        raise ValueError("evaluate_autoencoder: the data loader yielded no batch")
    return {**{k: v / n for k, v in sums.items()}, "num_examples": float(n)}


@torch.no_grad()
def evaluate_ldm(
    denoiser: nn.Module,
    ae: AutoencoderKL,
    scheduler: SchedulerMixin,
    loader: Iterable[Batch],
    device: torch.device,
    seed: int = 0,
) -> dict[str, float]:
    """Held-out noise-prediction MSE with seeded noise and timesteps (comparable across
    rounds and sites)."""
    denoiser.to(device).eval()
    ae.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    total, n = 0.0, 0
    for batch in loader:
        z0 = encode_latents(ae, batch["image"].to(device), generator=generator)
        loss = diffusion_loss(
            denoiser,
            scheduler,
            z0,
            batch["genotypes"].to(device),
            batch["label"].to(device),
            generator=generator,
        )
        total += loss.item() * z0.shape[0]
        n += z0.shape[0]
    if n == 0:
        raise ValueError("evaluate_ldm: the data loader yielded no batch")
    return {"mse": total / n, "num_examples": float(n)}


@torch.no_grad()
def condition_use(
    denoiser: nn.Module,
    ae: AutoencoderKL,
    scheduler: SchedulerMixin,
    loader: Iterable[Batch],
    device: torch.device,
    e4_columns: Sequence[int] = (),
    seed: int = 0,
    repeats: int = 4,
) -> dict[str, float]:
    """Whether the denoiser uses its conditions: the held-out noise-prediction MSE with the
    true conditions, and how much it rises when a condition is shuffled across subjects.

    The same noise, timesteps and latents serve every arm (paired), ``repeats`` draws per
    image. Keys: ``mse``; ``shuffle-e4`` (every APOE e4 column permuted together, the rest of
    the genotype kept), ``shuffle-genotypes`` (whole genotype rows permuted) and
    ``shuffle-dx`` (diagnoses permuted): MSE(shuffled) - MSE(true), > 0 when it is used.
    A total loss cannot show this: a model that ignores e4 reaches nearly the same loss.
    """
    denoiser.to(device).eval()
    ae.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = [b for b in loader]
    if not batches:
        raise ValueError("condition_use: the data loader yielded no batch")
    x = torch.cat([b["image"] for b in batches]).to(device)
    genotypes = torch.cat([b["genotypes"] for b in batches]).to(device).long()
    labels = torch.cat([b["label"] for b in batches]).to(device).long()
    n = x.shape[0]
    z0 = encode_latents(ae, x, generator=generator).float()
    e4 = list(e4_columns)

    def shuffled(kind: str, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, y = genotypes, labels
        if kind == "shuffle-e4" and e4:
            g = genotypes.clone()
            g[:, e4] = genotypes[perm][:, e4]
        elif kind == "shuffle-genotypes":
            g = genotypes[perm]
        elif kind == "shuffle-dx":
            y = labels[perm]
        return g, y

    arms = ["true", "shuffle-genotypes", "shuffle-dx"] + (["shuffle-e4"] if e4 else [])
    sums = dict.fromkeys(arms, 0.0)
    drop = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(repeats):
        noise = torch.randn(z0.shape, device=device, generator=generator)
        t = torch.randint(
            0, scheduler.config.num_train_timesteps, (n,), device=device, generator=generator
        )
        perm = torch.randperm(n, device=device, generator=generator)
        z_t = scheduler.add_noise(z0, noise, t)
        target = diffusion_target(scheduler, z0, noise, t).float()
        for arm in arms:
            g, y = (genotypes, labels) if arm == "true" else shuffled(arm, perm)
            pred = denoiser(z_t, t, g, y, drop).float()
            sums[arm] += F.mse_loss(pred, target).item()
    true = sums["true"] / repeats
    out = {"mse": true, "num_examples": float(n)}
    out.update({arm: sums[arm] / repeats - true for arm in arms if arm != "true"})
    return out
