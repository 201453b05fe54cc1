"""KL autoencoder (diffusers ``AutoencoderKL``): slices (B, 1, H, W) <-> latents (B, c, H/4, W/4).

Images live in [0, 1] everywhere outside this module; the network sees [-1, 1]. The latent
scale factor 1/std(z) is stored in ``ae.config.scaling_factor`` (so in ``config.json`` when
the autoencoder is saved) and applied by ``encode_latents`` / ``decode_latents``: the
diffusion model only ever sees scaled latents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from conf.schema import ModelConfig


def build_autoencoder(cfg: ModelConfig, image_size: int) -> AutoencoderKL:
    """A single-channel ``AutoencoderKL`` with ``len(cfg.ae_channels) - 1`` downsamplings."""
    levels = len(cfg.ae_channels)
    if image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size={image_size} not divisible by 2**{levels - 1}")
    if any(c % cfg.ae_norm_groups for c in cfg.ae_channels):
        raise ValueError(f"ae_channels {cfg.ae_channels} not divisible by {cfg.ae_norm_groups}")
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.ae_channels),
        layers_per_block=cfg.ae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.ae_norm_groups,
        sample_size=image_size,
        scaling_factor=1.0,  # replaced by 1/std(z) once computed from data
    )


def latent_size(ae: AutoencoderKL) -> int:
    """Side of the latent grid: image size / 2**(levels - 1)."""
    return ae.config.sample_size // 2 ** (len(ae.config.block_out_channels) - 1)


def encode_latents(
    ae: AutoencoderKL,
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    mode: bool = False,
) -> torch.Tensor:
    """Images (B, 1, H, W) in [0, 1] -> scaled latents (B, c, H/4, W/4): a posterior sample,
    or with ``mode`` the posterior mode (deterministic: reconstructions, evaluation)."""
    posterior = ae.encode(2.0 * x - 1.0).latent_dist
    z = posterior.mode() if mode else posterior.sample(generator=generator)
    return z * ae.config.scaling_factor


def decode_latents(ae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, c, h, w) -> images (B, 1, 4h, 4w) clamped to [0, 1]."""
    x = ae.decode(z / ae.config.scaling_factor).sample
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def autoencoder_loss(
    ae: AutoencoderKL,
    x: torch.Tensor,
    kl_weight: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """L1 + kl_weight * KL on images (B, 1, H, W) in [0, 1].

    Returns the loss, the reconstruction (B, 1, H, W) in [-1, 1] and the loss parts.
    """
    target = 2.0 * x - 1.0
    posterior = ae.encode(target).latent_dist
    recon = ae.decode(posterior.sample(generator=generator)).sample
    l1 = (recon - target).abs().mean()
    kl = posterior.kl().mean()  # KL summed over latent dims, averaged over the batch
    loss = l1 + kl_weight * kl
    return loss, recon, {"l1": l1.item(), "kl": kl.item()}


class PatchDiscriminator(nn.Module):
    """PatchGAN critic (B, 1, H, W) in [-1, 1] -> logits (B, 1, H/8, W/8).

    GroupNorm rather than BatchNorm keeps samples independent (DP-SGD friendly).
    """

    def __init__(self, channels: int = 32, n_layers: int = 3, groups: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, n_layers):
            c_out = channels * 2**i
            layers += [
                nn.Conv2d(c, c_out, 4, 2, 1),
                nn.GroupNorm(min(groups, c_out), c_out),
                nn.LeakyReLU(0.2),
            ]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Critic hinge loss: mean(relu(1 - real)) + mean(relu(1 + fake)), halved."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


@torch.no_grad()
def latent_moments(
    ae: AutoencoderKL,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    max_batches: int = 0,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(count, sum, sum of squares) of unscaled latent values over ``batches``.

    Moments rather than a std so that sites can pool them (federated scale factor).
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    count, total, total_sq = 0.0, 0.0, 0.0
    was_training = ae.training
    ae.eval()
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        x = batch["image"].to(device)
        z = ae.encode(2.0 * x - 1.0).latent_dist.sample(generator=generator).double()
        count += z.numel()
        total += z.sum().item()
        total_sq += (z * z).sum().item()
    ae.train(was_training)
    return count, total, total_sq


def scale_factor_from_moments(count: float, total: float, total_sq: float) -> float:
    """1 / std(z) from pooled moments."""
    if count < 2:
        raise ValueError("need at least two latent values to estimate the scale factor")
    var = max(total_sq / count - (total / count) ** 2, 1e-12)
    return 1.0 / math.sqrt(var)


def set_scale_factor(ae: AutoencoderKL, scale: float) -> None:
    """Store the scale factor in the autoencoder's config (it travels with save_pretrained)."""
    ae.register_to_config(scaling_factor=float(scale))
