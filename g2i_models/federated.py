"""The server's data and model work between rounds, as plain functions: the federation's SNP
panel, pooled genotype frequencies, the DP-SGD step plan and the synthetic set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from conf.schema import FederationConfig, PrivacyConfig, TrainConfig
from g2i_models.pipeline import G2IPipeline, generate
from g2i_models.privacy import batches_per_epoch, planned_steps
from g2i_models.synthetic import genotype_frequencies, sample_profiles


def intersect_panels(panels: Sequence[Sequence[str]]) -> list[str]:
    """SNPs every site has, in the first site's order."""
    if not panels:
        return []
    rest = [set(p) for p in panels[1:]]
    return [s for s in panels[0] if all(s in p for p in rest)]


def pool_per_dx(
    per_dx: Sequence[np.ndarray], panels: Sequence[Sequence[str]], panel: Sequence[str]
) -> np.ndarray:
    """Sum of the sites' (3, n_site_snps, 4) per-diagnosis genotype counts on ``panel``."""
    total = np.zeros((3, len(panel), 4), dtype=np.int64)
    for counts, names in zip(per_dx, panels, strict=True):
        pos = {s: i for i, s in enumerate(names)}
        total += np.asarray(counts)[:, [pos[s] for s in panel], :]
    return total


def allele_frequencies(freqs: np.ndarray) -> list[float]:
    """Per-SNP frequency of the counted allele, averaged over diagnoses, from (3, n, 3)
    genotype frequencies."""
    allele = (freqs[..., 1] + 2 * freqs[..., 2]).mean(axis=0) / 2
    return [float(a) for a in allele]


def planned_dp_steps(
    n_train: Sequence[int],
    fed: FederationConfig,
    train: TrainConfig,
    privacy: PrivacyConfig | None = None,
    pretrained: bool = False,
) -> int:
    """Largest number of local DP-SGD steps any site takes over the private phases (the LDM
    only after a public stage, whose autoencoder the sites do not train), at the expected
    Poisson batch of ``privacy`` (else ``train.batch_size``)."""
    n = max(n_train)
    expected = privacy.expected_batch_size if privacy is not None else 0

    def per_epoch(phase: str) -> int:
        return batches_per_epoch(n, expected or train.batch_for(phase))

    ae = fed.rounds_ae * planned_steps(per_epoch("ae"), train.ae_epochs, train.max_steps_ae)
    ldm = fed.rounds_ldm * planned_steps(per_epoch("ldm"), train.ldm_epochs, train.max_steps_ldm)
    return ldm + (0 if pretrained else ae)


def synthetic_set(
    pipeline: G2IPipeline, freqs: np.ndarray, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``per_class`` images per diagnosis from genotype profiles drawn per SNP from the pooled
    per-diagnosis frequencies: images (3n, 1, H, W), labels (3n,), genotypes (3n, n_snps)."""
    rng = np.random.default_rng(seed)
    genotypes = torch.from_numpy(
        np.concatenate([sample_profiles(freqs, k, per_class, rng) for k in range(3)])
    )
    labels = torch.arange(3).repeat_interleave(per_class)
    return generate(pipeline, genotypes, labels, seed=seed), labels, genotypes


__all__ = [
    "allele_frequencies",
    "genotype_frequencies",
    "intersect_panels",
    "planned_dp_steps",
    "pool_per_dx",
    "synthetic_set",
]
