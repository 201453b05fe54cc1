"""Hardy-Weinberg exact test (Wigginton, Cutler and Abecasis 2005), as PLINK 1.9 computes it."""

from __future__ import annotations

import numpy as np


def hwe_exact_p(n_het: int, n_hom1: int, n_hom2: int, midp: bool = False) -> float:
    """Exact two-sided HWE p-value for one SNP from its genotype counts.

    The p-value sums the probabilities of all heterozygote counts (with the same allele
    counts) that are no more likely than the observed one. With ``midp``, half the
    probability of the observed configuration is subtracted (Graffelman and Moreno 2013).
    A SNP with no called genotypes has p = 1.
    """
    if min(n_het, n_hom1, n_hom2) < 0:
        raise ValueError("genotype counts must be non-negative")
    n = n_het + n_hom1 + n_hom2
    if n == 0:
        return 1.0
    n_rare = 2 * min(n_hom1, n_hom2) + n_het
    n_common = 2 * n - n_rare
    probs = np.zeros(n_rare + 1, dtype=np.float64)
    # Start at the heterozygote count of highest probability, recur outwards (eq. 2 of the
    # paper), then normalise; this stays finite for any sample size.
    mid = n_rare * (2 * n - n_rare) // (2 * n)
    if (n_rare - mid) % 2:
        mid += 1
    probs[mid] = 1.0
    het = mid
    hom_r = (n_rare - mid) // 2
    hom_c = n - mid - hom_r
    while het >= 2:
        probs[het - 2] = probs[het] * het * (het - 1) / (4.0 * (hom_r + 1) * (hom_c + 1))
        het -= 2
        hom_r += 1
        hom_c += 1
    het = mid
    hom_r = (n_rare - mid) // 2
    hom_c = n - mid - hom_r
    while het <= n_rare - 2:
        probs[het + 2] = probs[het] * 4.0 * hom_r * hom_c / ((het + 2.0) * (het + 1.0))
        het += 2
        hom_r -= 1
        hom_c -= 1
    p_obs = probs[n_het]
    # Tolerance as in the reference implementation: ties within floating error count.
    mask = probs <= p_obs * (1 + 1e-8)
    p = probs[mask].sum()
    if midp:
        p -= 0.5 * p_obs
    return float(min(1.0, p / probs.sum()))
