"""Transformer encoder over the SNP sequence: one token per SNP (paper eq. 10, T_theta(y)).

Written for Opacus (DESIGN.md 7b): attention is hand-rolled from ``nn.Linear`` (no
``nn.MultiheadAttention``, so ``ModuleValidator.fix`` renames nothing) and the per-SNP
position indices are materialised as a (B, n_snps) tensor, so every parameterised layer sees a
batch dimension and per-sample gradients can be computed in hooks mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

# Genotype token values: 0/1/2 copies of the risk allele, 3 missing, 4 the null condition
# used for classifier-free guidance (a whole genotype replaced by the null token).
MISSING_GENOTYPE = 3
NULL_GENOTYPE = 4
N_GENOTYPE_TOKENS = 5


class SelfAttention(nn.Module):
    """Multi-head self-attention from ``nn.Linear`` layers: (B, n, d) -> (B, n, d)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"snp_embed_dim={dim} must be divisible by snp_heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_ratio * dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SNPEncoder(ModelMixin, ConfigMixin):
    """Genotypes (B, n_snps) int64 in {0, 1, 2, 3=missing, 4=null} -> snp_tokens (B, n_snps, d).

    Token embedding = embedding of the genotype value + a learned embedding of the SNP's
    index in the panel; ``depth`` pre-norm transformer blocks; a final LayerNorm.
    ``pool`` gives one vector per subject (B, d), used by the variant without cross-attention.

    ``major_columns`` names panel columns (APOE e4) whose values the denoiser also reads
    directly, beside the tokens (``major_values``).

    ``per_snp_values=False`` (the paper) shares one value embedding (0/1/2/missing/null) by
    all SNPs, so a SNP's token differs from another's only by its position embedding;
    ``True`` gives every SNP its own value embedding (``n_snps * 5`` rows), so a genotype
    change at one SNP moves its token in a direction of its own (measured: an e4 change moved
    the UNet output as much as any random SNP with shared values).
    """

    @register_to_config
    def __init__(
        self,
        n_snps: int,
        embed_dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
        dropout: float = 0.0,
        per_snp_values: bool = False,
        major_columns: list[int] | None = None,
    ) -> None:
        super().__init__()
        if n_snps < 1:
            raise ValueError(f"n_snps must be >= 1, got {n_snps}")
        rows = N_GENOTYPE_TOKENS * (n_snps if per_snp_values else 1)
        self.genotype_embed = nn.Embedding(rows, embed_dim)
        self.snp_embed = nn.Embedding(n_snps, embed_dim)
        self.blocks = nn.ModuleList(
            [EncoderBlock(embed_dim, heads, mlp_ratio, dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, genotypes: torch.Tensor) -> torch.Tensor:
        """(B, n_snps) int64 -> (B, n_snps, embed_dim)."""
        n = genotypes.shape[1]
        if n != self.config.n_snps:
            raise ValueError(
                f"SNPEncoder was built for {self.config.n_snps} SNPs, got genotypes with {n}"
            )
        positions, values = self._indices(genotypes)
        x = self.genotype_embed(values) + self.snp_embed(positions)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def major_values(self, genotypes: torch.Tensor) -> torch.Tensor:
        """(B, n_snps) -> (B, max(1, k)) float: the values (0/1/2, 3 missing, 4 null) of the
        ``major_columns`` loci (a constant column when there are none)."""
        cols = list(self.config.major_columns or [])
        if not cols:
            return torch.zeros(genotypes.shape[0], 1, device=genotypes.device)
        return genotypes[:, cols].float()

    def additive(self, genotypes: torch.Tensor) -> torch.Tensor:
        """(B, n_snps) -> (B, d): the mean of the genotype-value embeddings, before any
        attention: an additive (polygenic-score-like) summary, linear in each SNP's value."""
        _, values = self._indices(genotypes)
        return self.genotype_embed(values).mean(dim=1)

    def _indices(self, genotypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, value rows), both (B, n_snps): the SNP index and the row of
        ``genotype_embed`` for each genotype (per SNP with ``per_snp_values``)."""
        b, n = genotypes.shape
        # (B, n) indices, not a broadcast (n,) row: Opacus needs the batch dimension.
        positions = torch.arange(n, device=genotypes.device).unsqueeze(0).repeat(b, 1)
        values = genotypes.long()
        if self.config.per_snp_values:
            values = positions * N_GENOTYPE_TOKENS + values
        return positions, values

    @staticmethod
    def pool(snp_tokens: torch.Tensor) -> torch.Tensor:
        """(B, n_snps, d) -> (B, d): the genotype as one vector (mean over SNP tokens)."""
        return snp_tokens.mean(dim=1)
