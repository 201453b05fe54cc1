"""Gene-conditioned denoiser: diffusers ``UNet2DConditionModel`` + the SNP encoder.

The paper's four variants differ in which conditions the UNet sees and how:

- ``ldm_label``: diagnosis only;
- ``g2i``: genotype only, SNP tokens through cross-attention (paper eq. 10);
- ``g2i_label_noattn``: genotype pooled into one vector, projected and added to the
  timestep embedding (no attention over SNP tokens), plus the diagnosis;
- ``g2i_label_attn``: genotype through cross-attention plus the diagnosis.

and our default, ``g2i_plus``: every SNP with its own value embedding, the SNP tokens through
cross-attention (as ``g2i_label_attn``) and, beside it, the pooled genotype added to the
timestep embedding through a zero-initialised projection, plus the diagnosis. The additive
route is what makes a single SNP's effect learnable in a few hundred steps: cross-attention
over ~50 tokens starts near uniform and, with values shared by all SNPs, learned about 1% of
an oracle-strength e4 signal in 480 steps.

The pooled genotype enters through diffusers' ``time_cond_proj_dim`` (the ``cond_proj`` of
the UNet's timestep embedding, zero-initialised), so it is saved with the UNet. The
diagnosis in ``embed`` mode is the UNet's class embedding (``num_class_embeds``) added to the
timestep embedding; in the paper's ``concat`` mode it is concatenated to the latent input.

The diagnosis is either concatenated to the latent input as one-hot maps (paper, ``concat``)
or embedded and added to the timestep embedding (authors' code, ``embed``). The null
condition of classifier-free guidance is the all-null genotype and an extra "no label" class
(a zero one-hot map in ``concat`` mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from conf.schema import ModelConfig
from g2i_models.snp_encoder import NULL_GENOTYPE, SNPEncoder

LABEL_MODES = ("concat", "embed")
# What the timestep-embedding route of the genotype reads: the mean of the encoder's SNP
# tokens, or the mean of the value embeddings before attention (additive in the SNPs).
GENOTYPE_POOLS = ("tokens", "values")


@dataclass(frozen=True)
class VariantSpec:
    """Which conditions a variant uses and whether the genotype enters by cross-attention."""

    genotype: bool
    label: bool
    cross_attention: bool
    # The pooled genotype added to the timestep embedding.
    pooled: bool = False
    # One value embedding per SNP (else shared by all SNPs, the paper's encoder).
    per_snp_values: bool = False


VARIANTS: dict[str, VariantSpec] = {
    "ldm_label": VariantSpec(genotype=False, label=True, cross_attention=False),
    "g2i": VariantSpec(genotype=True, label=False, cross_attention=True),
    "g2i_label_noattn": VariantSpec(
        genotype=True, label=True, cross_attention=False, pooled=True
    ),
    "g2i_label_attn": VariantSpec(genotype=True, label=True, cross_attention=True),
    "g2i_plus": VariantSpec(
        genotype=True, label=True, cross_attention=True, pooled=True, per_snp_values=True
    ),
}
# The paper's four models (Table 1); ``g2i_plus`` is ours.
PAPER_VARIANTS = ("ldm_label", "g2i", "g2i_label_noattn", "g2i_label_attn")


def variant_spec(variant: str, label_mode: str = "embed") -> VariantSpec:
    """The spec of a variant name; ValueError naming the choices for an unknown one."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model.variant={variant!r}; choose one of {sorted(VARIANTS)}")
    if label_mode not in LABEL_MODES:
        raise ValueError(f"unknown model.label_mode={label_mode!r}; choose one of {LABEL_MODES}")
    return VARIANTS[variant]


def build_unet(cfg: ModelConfig, latent_size: int) -> UNet2DConditionModel:
    """The UNet of ``cfg.variant`` for latents (B, latent_channels, latent_size, latent_size)."""
    spec = variant_spec(cfg.variant, cfg.label_mode)
    channels = tuple(cfg.unet_channels)
    if len(cfg.unet_attention_levels) != len(channels):
        raise ValueError("model.unet_attention_levels needs one entry per unet_channels level")
    if any(c % cfg.unet_norm_groups or c % cfg.unet_head_dim for c in channels):
        raise ValueError(
            f"unet_channels {list(channels)} must be divisible by unet_norm_groups "
            f"({cfg.unet_norm_groups}) and unet_head_dim ({cfg.unet_head_dim})"
        )
    # Cross-attention variants attend to SNP tokens; the others get self-attention at the same
    # levels, so the variants differ only in how the genotype enters.
    down_attn, up_attn, mid = (
        ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D", "UNetMidBlock2DCrossAttn")
        if spec.cross_attention
        else ("AttnDownBlock2D", "AttnUpBlock2D", "UNetMidBlock2D")
    )
    levels = cfg.unet_attention_levels
    down = tuple(down_attn if a else "DownBlock2D" for a in levels)
    up = tuple(up_attn if a else "UpBlock2D" for a in reversed(levels))
    in_channels = cfg.latent_channels
    if spec.label and cfg.label_mode == "concat":
        in_channels += cfg.num_classes
    class_kwargs: dict[str, object] = {}
    if spec.pooled:
        class_kwargs["time_cond_proj_dim"] = cfg.snp_embed_dim
    if spec.label and cfg.label_mode == "embed":
        class_kwargs["num_class_embeds"] = cfg.num_classes + 1  # last index = null label
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=in_channels,
        out_channels=cfg.latent_channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type=mid,
        block_out_channels=channels,
        layers_per_block=cfg.unet_layers_per_block,
        norm_num_groups=cfg.unet_norm_groups,
        cross_attention_dim=cfg.snp_embed_dim,
        # diffusers reads attention_head_dim as the number of heads of its transformer blocks.
        attention_head_dim=tuple(c // cfg.unet_head_dim for c in channels),
        **class_kwargs,
    )
    if spec.pooled and cfg.genotype_time_init == "zero":
        # Zero: the genotype starts with no effect and its direction is learned, instead of
        # a random projection perturbing every timestep embedding.
        nn.init.zeros_(unet.time_embedding.cond_proj.weight)
    return unet


def build_snp_encoder(cfg: ModelConfig, n_snps: int) -> SNPEncoder | None:
    """The SNP encoder for ``n_snps`` panel SNPs; None for the label-only variant."""
    if not variant_spec(cfg.variant, cfg.label_mode).genotype:
        return None
    return SNPEncoder(
        n_snps=n_snps,
        embed_dim=cfg.snp_embed_dim,
        depth=cfg.snp_depth,
        heads=cfg.snp_heads,
        mlp_ratio=cfg.snp_mlp_ratio,
        dropout=cfg.snp_dropout,
        per_snp_values=variant_spec(cfg.variant, cfg.label_mode).per_snp_values,
    )


class ConditionalDenoiser(nn.Module):
    """eps_theta(z_t, t, genotype, label): the trainable part of the LDM (UNet + SNP encoder).

    One module, so a federated client, the centralized trainer and Opacus all see the same
    parameters (``unet.*`` and ``snp_encoder.*``).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        snp_encoder: SNPEncoder | None,
        variant: str,
        label_mode: str = "embed",
        num_classes: int = 3,
        genotype_pool: str = "tokens",
    ) -> None:
        super().__init__()
        self.spec = variant_spec(variant, label_mode)
        if genotype_pool not in GENOTYPE_POOLS:
            raise ValueError(
                f"unknown model.genotype_pool={genotype_pool!r}; choose one of {GENOTYPE_POOLS}"
            )
        self.genotype_pool = genotype_pool
        if self.spec.genotype and snp_encoder is None:
            raise ValueError(f"variant {variant!r} needs an SNP encoder")
        self.unet = unet
        self.snp_encoder = snp_encoder
        self.variant = variant
        self.label_mode = label_mode
        self.num_classes = num_classes

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        genotypes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the UNet target for noisy latents.

        Args:
            z_t: noisy scaled latents (B, c, h, w).
            t: timesteps (B,) int64.
            genotypes: (B, n_snps) int64 in {0, 1, 2, 3}; required by genotype variants.
            labels: (B,) int64 in [0, num_classes); required by label variants.
            drop: (B,) bool, True = use the null condition for that sample (guidance).

        Returns:
            (B, c, h, w) prediction (epsilon for ``prediction_type="epsilon"``).
        """
        b = z_t.shape[0]
        if drop is None:
            drop = torch.zeros(b, dtype=torch.bool, device=z_t.device)
        snp_tokens = None
        if self.spec.genotype:
            if genotypes is None:
                raise ValueError(f"variant {self.variant!r} needs genotypes")
            genotypes = torch.where(drop[:, None], NULL_GENOTYPE, genotypes.long())
            snp_tokens = self.snp_encoder(genotypes)  # (B, n_snps, d)
        onehot = None
        class_labels = None
        pooled = None
        if self.spec.pooled and self.genotype_pool == "values":
            pooled = self.snp_encoder.additive(genotypes)  # (B, d)
        elif self.spec.pooled:
            pooled = SNPEncoder.pool(snp_tokens)  # (B, d)
        if not self.spec.cross_attention:
            snp_tokens = None
        if self.spec.label:
            if labels is None:
                raise ValueError(f"variant {self.variant!r} needs diagnosis labels")
            labels = torch.where(drop, self.num_classes, labels.long())
            # The extra null class becomes an all-zero one-hot vector.
            onehot = F.one_hot(labels, self.num_classes + 1)[:, : self.num_classes].to(z_t.dtype)
            class_labels = labels
        if self.spec.label and self.label_mode == "concat":
            h, w = z_t.shape[-2:]
            z_t = torch.cat([z_t, onehot[:, :, None, None].expand(-1, -1, h, w)], dim=1)
            class_labels = None
        return self.unet(
            z_t,
            t,
            encoder_hidden_states=snp_tokens,
            class_labels=class_labels,
            timestep_cond=pooled,
        ).sample


def build_denoiser(cfg: ModelConfig, n_snps: int, latent_size: int) -> ConditionalDenoiser:
    """UNet + SNP encoder of ``cfg.variant`` for ``n_snps`` SNPs and (latent_size)^2 latents."""
    return ConditionalDenoiser(
        build_unet(cfg, latent_size),
        build_snp_encoder(cfg, n_snps),
        cfg.variant,
        cfg.label_mode,
        cfg.num_classes,
        cfg.genotype_pool,
    )
