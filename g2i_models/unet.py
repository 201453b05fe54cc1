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

The pooled genotype enters through diffusers' added embedding (``addition_embed_type=
"text_time"``: an MLP of the pooled genotype and sinusoidal codes of the major loci's values,
``model.major_loci``, APOE e4 by default, added to the timestep embedding), saved with the UNet.
A single SNP's change moves a mean over ~50 SNP tokens by ~1/50; its own code is not diluted. The
diagnosis in ``embed`` mode is the UNet's class embedding (``num_class_embeds``) added to the
timestep embedding; in the paper's ``concat`` mode it is concatenated to the latent input.

The diagnosis is either concatenated to the latent input as one-hot maps (paper, ``concat``)
or embedded and added to the timestep embedding (authors' code, ``embed``). The null
condition of classifier-free guidance is the all-null genotype and an extra "no label" class
(a zero one-hot map in ``concat`` mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from conf.schema import ModelConfig
from g2i_models.condition_embedding import ConditionEmbedding
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
    # The pooled genotype added to the timestep embedding (diffusers' added embedding).
    pooled: bool = False
    # One value embedding per SNP (else shared by all SNPs, the paper's encoder).
    per_snp_values: bool = False
    # Diagnosis, major loci and pooled genotype through a ``ConditionEmbedding`` (ours).
    cond_embedding: bool = False


VARIANTS: dict[str, VariantSpec] = {
    "ldm_label": VariantSpec(genotype=False, label=True, cross_attention=False),
    "g2i": VariantSpec(genotype=True, label=False, cross_attention=True),
    "g2i_label_noattn": VariantSpec(
        genotype=True, label=True, cross_attention=False, pooled=True
    ),
    "g2i_label_attn": VariantSpec(genotype=True, label=True, cross_attention=True),
    "g2i_plus": VariantSpec(
        genotype=True, label=True, cross_attention=True, per_snp_values=True, cond_embedding=True
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


def build_unet(cfg: ModelConfig, latent_size: int, n_major: int = 0) -> UNet2DConditionModel:
    """The UNet of ``cfg.variant`` for latents (B, latent_channels, latent_size, latent_size);
    ``n_major`` major loci get their own embedding in the genotype's timestep route."""
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
        # diffusers' SDXL-style added embedding: an MLP of [pooled genotype, sinusoidal codes
        # of the major loci's values] added to the timestep embedding.
        class_kwargs.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=cfg.locus_embed_dim,
            projection_class_embeddings_input_dim=cfg.snp_embed_dim
            + max(1, n_major) * cfg.locus_embed_dim,
        )
    if spec.cond_embedding:
        # The ConditionEmbedding's output is added to the timestep embedding as it is.
        class_kwargs["class_embed_type"] = "identity"
    elif spec.label and cfg.label_mode == "embed":
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
        # Zero: the genotype starts with no effect through this route.
        nn.init.zeros_(unet.add_embedding.linear_2.weight)
        nn.init.zeros_(unet.add_embedding.linear_2.bias)
    return unet


def major_columns(cfg: ModelConfig, panel: Sequence[str] | None) -> list[int]:
    """Panel indices of ``cfg.major_loci`` (those present; none without a panel)."""
    if not panel:
        return []
    names = list(panel)
    return [names.index(n) for n in cfg.major_loci if n in names]


def build_snp_encoder(
    cfg: ModelConfig, n_snps: int, panel: Sequence[str] | None = None
) -> SNPEncoder | None:
    """The SNP encoder for ``n_snps`` panel SNPs; None for the label-only variant."""
    spec = variant_spec(cfg.variant, cfg.label_mode)
    if not spec.genotype:
        return None
    return SNPEncoder(
        n_snps=n_snps,
        embed_dim=cfg.snp_embed_dim,
        depth=cfg.snp_depth,
        heads=cfg.snp_heads,
        mlp_ratio=cfg.snp_mlp_ratio,
        dropout=cfg.snp_dropout,
        per_snp_values=spec.per_snp_values,
        major_columns=major_columns(cfg, panel) if spec.cond_embedding else [],
    )


def build_cond_embedding(cfg: ModelConfig, n_major: int) -> ConditionEmbedding | None:
    """The ``ConditionEmbedding`` of a variant that has one (``g2i_plus``), else None."""
    spec = variant_spec(cfg.variant, cfg.label_mode)
    if not spec.cond_embedding:
        return None
    return ConditionEmbedding(
        time_embed_dim=4 * cfg.unet_channels[0],  # diffusers' timestep embedding width
        num_classes=cfg.num_classes if spec.label and cfg.label_mode == "embed" else 0,
        n_major=n_major,
        pooled_dim=cfg.snp_embed_dim,
        locus_coding=cfg.locus_coding,
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
        cond_embedding: ConditionEmbedding | None = None,
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
        if self.spec.cond_embedding and cond_embedding is None:
            raise ValueError(f"variant {variant!r} needs a condition embedding")
        self.unet = unet
        self.snp_encoder = snp_encoder
        self.cond_embedding = cond_embedding
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
        drop_genotype: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the UNet target for noisy latents.

        Args:
            z_t: noisy scaled latents (B, c, h, w).
            t: timesteps (B,) int64.
            genotypes: (B, n_snps) int64 in {0, 1, 2, 3}; required by genotype variants.
            labels: (B,) int64 in [0, num_classes); required by label variants.
            drop: (B,) bool, True = use the null condition for that sample (guidance).
            drop_genotype: (B,) bool, True = the null genotype only (the diagnosis kept):
                the genotype's own guidance term.

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
            null = drop if drop_genotype is None else drop | drop_genotype
            genotypes = torch.where(null[:, None], NULL_GENOTYPE, genotypes.long())
            snp_tokens = self.snp_encoder(genotypes)  # (B, n_snps, d)
        onehot = None
        class_labels = None
        added = None
        pooled = None
        if self.spec.pooled or self.spec.cond_embedding:
            if self.genotype_pool == "values":
                pooled = self.snp_encoder.additive(genotypes)  # (B, d)
            else:
                pooled = SNPEncoder.pool(snp_tokens)  # (B, d)
        if self.spec.pooled:
            added = {"text_embeds": pooled, "time_ids": self.snp_encoder.major_values(genotypes)}
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
        if self.cond_embedding is not None:
            major = None
            if self.cond_embedding.config.n_major:
                major = self.snp_encoder.major_values(genotypes)
            class_labels = self.cond_embedding(class_labels, major, pooled)
        return self.unet(
            z_t,
            t,
            encoder_hidden_states=snp_tokens,
            class_labels=class_labels,
            added_cond_kwargs=added,
        ).sample


def build_denoiser(
    cfg: ModelConfig, n_snps: int, latent_size: int, panel: Sequence[str] | None = None
) -> ConditionalDenoiser:
    """UNet + SNP encoder of ``cfg.variant`` for ``n_snps`` SNPs and (latent_size)^2 latents;
    ``panel`` (the SNP names) locates ``cfg.major_loci`` for the genotype's timestep route."""
    if panel is not None and len(panel) != n_snps:
        raise ValueError(f"panel names {len(panel)} SNPs, n_snps is {n_snps}")
    encoder = build_snp_encoder(cfg, n_snps, panel)
    n_major = len(encoder.config.major_columns or []) if encoder is not None else 0
    return ConditionalDenoiser(
        build_unet(cfg, latent_size, n_major),
        encoder,
        cfg.variant,
        cfg.label_mode,
        cfg.num_classes,
        cfg.genotype_pool,
        build_cond_embedding(cfg, n_major),
    )
