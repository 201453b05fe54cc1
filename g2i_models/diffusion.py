"""The diffusion process, apart from the networks: noise schedulers, the training loss
(paper eq. 11) and the guided sampling loop.

Schedulers hold no parameters: training uses a ``DDPMScheduler``; sampling rebuilds DDPM,
DDIM or DPM-Solver++ from the same config, so the noise schedule always matches training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from conf.schema import ModelConfig
from g2i_models.unet import PAPER_VARIANTS, ConditionalDenoiser

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
}


def diffusion_process(cfg: ModelConfig) -> tuple[str, bool]:
    """(prediction_type, rescale_betas_zero_snr) of ``cfg``, filling the variant's defaults:
    the paper's four models predict the noise on the usual schedule (eq. 11); ``g2i_plus``
    predicts v on a zero-terminal-SNR schedule."""
    ours = cfg.variant not in PAPER_VARIANTS
    kind = cfg.prediction_type or ("v_prediction" if ours else "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown model.prediction_type={kind!r}; choose one of {list(PREDICTION_TYPES)} "
            "or leave it empty for the variant's"
        )
    zero_snr = cfg.rescale_betas_zero_snr
    if zero_snr is None:
        zero_snr = ours and kind == "v_prediction"
    if zero_snr and kind == "epsilon":
        raise ValueError(
            "model.rescale_betas_zero_snr=true needs model.prediction_type=v_prediction: at zero "
            "terminal SNR an epsilon prediction says nothing about the latent"
        )
    return kind, bool(zero_snr)


def build_noise_scheduler(cfg: ModelConfig) -> DDPMScheduler:
    """The training scheduler (forward process q(z_t | z_0), eq. 3)."""
    kind, zero_snr = diffusion_process(cfg)
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=kind,
        rescale_betas_zero_snr=zero_snr,
        clip_sample=False,  # latents are not bounded to [-1, 1]
        timestep_spacing="trailing",  # few-step sampling starts at t = T - 1
    )


def sampling_scheduler(scheduler: SchedulerMixin, sampler: str) -> SchedulerMixin:
    """A fresh ``sampler`` ("ddpm", "ddim", "dpm++") sharing ``scheduler``'s noise schedule."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    cls, extra = SAMPLERS[sampler]
    return cls.from_config(scheduler.config, **extra)


def condition_dropout_mask(
    batch_size: int, p: float, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,) bool, True with probability p: samples trained with the null condition."""
    if p <= 0:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    return torch.rand(batch_size, device=device, generator=generator) < p


def diffusion_target(
    scheduler: SchedulerMixin, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the denoiser regresses, by ``prediction_type`` (epsilon: the noise, eq. 11)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(z0, noise, t)
    if kind == "sample":
        return z0
    raise ValueError(f"unknown prediction_type {kind!r}")


def diffusion_loss(
    denoiser: torch.nn.Module,
    scheduler: SchedulerMixin,
    z0: torch.Tensor,
    genotypes: torch.Tensor | None,
    labels: torch.Tensor | None,
    cond_dropout: float = 0.0,
    generator: torch.Generator | None = None,
    draws: int = 1,
    genotype_dropout: float = 0.0,
    snr_gamma: float = 0.0,
    timestep_power: float = 1.0,
) -> torch.Tensor:
    """MSE between the denoiser output and its target for scaled latents z0 (B, c, h, w).

    ``draws`` > 1 (augmentation multiplicity): each example gets ``draws`` (noise, t,
    condition-dropout) draws as ``draws`` consecutive rows (``repeat_interleave``), so the
    denoiser runs on B * draws rows; DP-SGD folds their per-row gradients back into one per
    example (``train.fold_draws``). The mean over all rows is the mean of the per-example
    means. ``denoiser`` is a ``ConditionalDenoiser`` or an Opacus wrapper of one.
    ``cond_dropout``: the probability that a row gets the null condition (every condition);
    ``genotype_dropout``: independently, that it gets the null genotype with its diagnosis
    kept, which teaches the denoiser eps(diagnosis, no genotype) for genotype guidance.
    ``snr_gamma`` > 0: each row's MSE weighted by ``snr_weight`` (min-SNR-gamma); 0 = the
    plain mean.
    """
    if draws > 1:
        z0 = z0.repeat_interleave(draws, dim=0)
        genotypes = None if genotypes is None else genotypes.repeat_interleave(draws, dim=0)
        labels = None if labels is None else labels.repeat_interleave(draws, dim=0)
    b, device = z0.shape[0], z0.device
    noise = torch.randn(z0.shape, device=device, generator=generator)
    n_t = scheduler.config.num_train_timesteps
    if timestep_power == 1.0:  # randint: the default's random stream stays what it was
        t = torch.randint(0, n_t, (b,), device=device, generator=generator)
    else:
        u = torch.rand(b, device=device, generator=generator)
        t = (n_t * u.pow(timestep_power)).long().clamp(max=n_t - 1)
    z_t = scheduler.add_noise(z0, noise, t)
    drop = condition_dropout_mask(b, cond_dropout, device, generator)
    drop_g = (
        condition_dropout_mask(b, genotype_dropout, device, generator)
        if genotype_dropout > 0
        else None
    )
    pred = denoiser(z_t, t, genotypes, labels, drop, drop_g)
    target = diffusion_target(scheduler, z0, noise, t).float()
    if snr_gamma <= 0:
        return F.mse_loss(pred.float(), target)
    per_row = (pred.float() - target).pow(2).flatten(1).mean(dim=1)
    return (snr_weight(scheduler, t, snr_gamma) * per_row).mean()


def snr_weight(scheduler: SchedulerMixin, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (B,) at timesteps ``t``: the weight of the latent's own
    error, min(SNR(t), gamma), written for the scheduler's target (divided by SNR for
    epsilon, by SNR + 1 for v, as is for the sample), SNR(t) = abar_t / (1 - abar_t)."""
    abar = scheduler.alphas_cumprod.to(t.device)[t].double()
    snr = abar / (1.0 - abar).clamp_min(1e-12)
    clipped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        w = clipped / snr.clamp_min(1e-12)
    elif kind == "v_prediction":
        w = clipped / (snr + 1.0)
    else:
        w = clipped
    return w.float()


@torch.no_grad()
def sample_latents(
    denoiser: ConditionalDenoiser,
    scheduler: SchedulerMixin,
    shape: tuple[int, int, int, int],
    genotypes: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: bool = False,
    genotype_guidance_scale: float | None = None,
) -> torch.Tensor:
    """Run the reverse process from noise to scaled latents (B, c, h, w).

    Classifier-free guidance: eps = eps_null + s * (eps_cond - eps_null); s = 1 skips the
    null pass. With a ``genotype_guidance_scale`` s_g (other than s, for a model trained with
    genotype dropout), the genotype gets a term of its own:
    eps = eps_null + s * (eps_dx - eps_null) + s_g * (eps_cond - eps_dx), where eps_dx has
    the diagnosis and the null genotype (three passes; s_g = s is the plain formula).
    ``generator`` may be one per image (a list of B): each image's initial noise and, for
    DDPM, its step noise then come from its own generator, so an image does not depend on
    what else is in the batch.
    """
    device = next(denoiser.parameters()).device
    b = shape[0]
    if isinstance(generator, list) and len(generator) != b:
        raise ValueError(f"{len(generator)} generators for a batch of {b} images")
    scheduler.set_timesteps(num_inference_steps, device=device)
    z = randn_tensor(shape, generator=generator, device=device) * scheduler.init_noise_sigma
    split = genotypes is not None and genotype_guidance_scale not in (None, guidance_scale)
    passes = 3 if split else 2 if guidance_scale != 1.0 else 1
    if passes > 1:
        genotypes = None if genotypes is None else genotypes.repeat(passes, 1)
        labels = None if labels is None else labels.repeat(passes)
    rows = torch.arange(passes * b, device=device)
    drop = (rows >= (passes - 1) * b) & (passes > 1)  # the last chunk: every condition null
    drop_g = (rows >= b) & (rows < 2 * b) if split else None  # the diagnosis-only chunk
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="sampling", leave=False):
        z_in = scheduler.scale_model_input(z.repeat(passes, 1, 1, 1) if passes > 1 else z, t)
        t_batch = torch.full((z_in.shape[0],), int(t), device=device, dtype=torch.long)
        pred = denoiser(z_in, t_batch, genotypes, labels, drop, drop_g).float()
        if split:
            cond, dx_only, null = pred.chunk(3)
            assert genotype_guidance_scale is not None
            pred = (
                null
                + guidance_scale * (dx_only - null)
                + genotype_guidance_scale * (cond - dx_only)
            )
        elif passes == 2:
            cond, null = pred.chunk(2)
            pred = null + guidance_scale * (cond - null)
        z = scheduler.step(pred, t, z, generator=generator).prev_sample
    return z
