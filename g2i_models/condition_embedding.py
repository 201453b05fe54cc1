"""What our default model (``g2i_plus``) adds to the UNet's timestep embedding: the diagnosis,
the major loci's values (APOE e4) and the pooled genotype, each a learned embedding.

Measured on the default cohort (480 LDM steps, centralized): the paper's route for the
genotype, cross-attention over ~50 SNP tokens, and a pooled genotype through a small projection
both left the generated e4 effect at 0.5-0.7% of the truth, while the diagnosis, whose
embedding starts as a N(0, 1) vector per class, ordered the ventricles from the first hundred
steps. A major locus gets the same kind of embedding per value (0/1/2 copies, missing, null):
the denoiser starts with distinct codes for e4 carriers and non-carriers and learns what
separates their images, as it does for the diagnosis (same probe: ratio 0.44 [0.36, 0.52],
0->1 step 182 mm^2 against the truth's 213). A code additive in the allele count
(``base + dose * w``) did worse at the same training (0.22 [0.18, 0.27]).

On the paper-sized cohort (911 subjects, e4 homozygotes about 2% of them) one free code per
value left the two-copy code barely trained: at 600 LDM steps (``fed_tiny`` settings, batch 4)
the 1->2 step came out negative (0->1 +74, 1->2 -54 mm^2; ratio 0.05 [0.00, 0.10]). The
default is now the cumulative coding, where two copies are the one-copy code plus a code of
their own, so every carrier trains the shared part: same run, 0->1 +73, 1->2 +27, ratio 0.24
[0.20, 0.28] (benchmarks/results/condition_use_probes.json). The pooled genotype (all SNPs)
enters through a zero-initialised projection, so it starts with no effect.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from g2i_models.snp_encoder import MISSING_GENOTYPE, N_GENOTYPE_TOKENS

LOCUS_CODINGS = ("value", "cumulative")


class ConditionEmbedding(ModelMixin, ConfigMixin):
    """(labels (B,), major-locus values (B, k), pooled genotype (B, d)) -> (B, time_embed_dim).

    ``num_classes`` 0 = no diagnosis (concat mode or a genotype-only model), ``n_major`` 0 =
    no major locus, ``pooled_dim`` 0 = no pooled genotype. Label index ``num_classes`` and
    locus value 4 are the null condition of classifier-free guidance.

    ``locus_coding``: ``"value"``, one free code per value (0, 1, 2 copies, missing, null);
    ``"cumulative"``, a genotyped value ``v`` is the sum of the codes of 0..v (a carrier of two
    copies has the one-copy code plus its own), so the rare two-copy carriers start from what
    every carrier taught the one-copy code; missing and null keep codes of their own.
    """

    @register_to_config
    def __init__(
        self,
        time_embed_dim: int,
        num_classes: int = 3,
        n_major: int = 1,
        pooled_dim: int = 0,
        locus_coding: str = "value",
    ) -> None:
        super().__init__()
        if locus_coding not in LOCUS_CODINGS:
            raise ValueError(f"locus_coding {locus_coding!r}: use one of {list(LOCUS_CODINGS)}")
        self.label_embed = nn.Embedding(num_classes + 1, time_embed_dim) if num_classes else None
        self.locus_embed = (
            nn.Embedding(n_major * N_GENOTYPE_TOKENS, time_embed_dim) if n_major else None
        )
        self.pooled_proj = None
        if pooled_dim:
            self.pooled_proj = nn.Linear(pooled_dim, time_embed_dim)
            nn.init.zeros_(self.pooled_proj.weight)
            nn.init.zeros_(self.pooled_proj.bias)

    def forward(
        self,
        labels: torch.Tensor | None = None,
        major_values: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        if self.label_embed is not None:
            if labels is None:
                raise ValueError("this condition embedding needs diagnosis labels")
            parts.append(self.label_embed(labels.long()))
        if self.locus_embed is not None:
            if major_values is None:
                raise ValueError("this condition embedding needs the major loci's values")
            k = major_values.shape[1]
            if k != self.config.n_major:
                raise ValueError(f"built for {self.config.n_major} major loci, got {k}")
            parts.append(self._loci(major_values.long()))
        if self.pooled_proj is not None:
            if pooled is None:
                raise ValueError("this condition embedding needs the pooled genotype")
            parts.append(self.pooled_proj(pooled))
        if not parts:
            raise ValueError("a condition embedding with no condition")
        return torch.stack(parts).sum(dim=0)

    def _loci(self, values: torch.Tensor) -> torch.Tensor:
        """(B, k) locus values -> (B, time_embed_dim), summed over the loci. One embedding
        lookup (Opacus computes its per-sample gradients)."""
        assert self.locus_embed is not None
        k = values.shape[1]
        offsets = torch.arange(k, device=values.device) * N_GENOTYPE_TOKENS
        if self.config.locus_coding == "value":
            return self.locus_embed(values + offsets).sum(dim=1)
        levels = torch.arange(MISSING_GENOTYPE, device=values.device)  # codes of 0, 1, 2
        v = values.unsqueeze(-1)  # (B, k, 1)
        genotyped = v < MISSING_GENOTYPE
        index = torch.where(genotyped, levels, v) + offsets.view(1, k, 1)  # (B, k, 3)
        mask = torch.where(genotyped, levels <= v, levels == 0)
        codes = self.locus_embed(index) * mask.unsqueeze(-1).to(self.locus_embed.weight.dtype)
        return codes.sum(dim=(1, 2))
