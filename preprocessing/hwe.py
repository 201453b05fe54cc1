"""Hardy-Weinberg exact test (Wigginton, Cutler and Abecasis 2005), as PLINK 1.9 computes it.

With n called genotypes and ``rare`` copies of the rarer allele, the heterozygote count h
has the parity of ``rare``; with homr = (rare - h) / 2 and homc = n - h - homr,
``P(h + 2) / P(h) = 4 homr homc / ((h + 2)(h + 1))``. The p-value is the probability mass
of the configurations no more likely than the observed one (ties within a relative 1e-12
count as "no more likely", which absorbs rounding in the recurrence). Mid-p (Graffelman
and Moreno 2013, PLINK's ``--hwe midp``) subtracts half the mass of the configurations that
tie with the observed one. No called genotypes: p = 1 (0.5 with mid-p), as PLINK reports.

PLINK's ``--hwe t`` removes a SNP when p < t (1 - 2^-44); ``hwe_fails`` applies that rule.
"""

from __future__ import annotations

import numpy as np

from preprocessing.bed_kernels import _ext

TIE_TOLERANCE = 1e-12
# PLINK 1.9 scales p-value thresholds by (1 - SMALL_EPSILON), SMALL_EPSILON = 2^-44.
PLINK_SMALL_EPSILON = 2.0**-44


def hwe_exact_p(n_het: int, n_hom1: int, n_hom2: int, midp: bool = False) -> float:
    """Exact two-sided HWE p-value for one SNP from its genotype counts."""
    if min(n_het, n_hom1, n_hom2) < 0:
        raise ValueError("genotype counts must be non-negative")
    n = n_het + n_hom1 + n_hom2
    if n == 0:
        return 0.5 if midp else 1.0
    homr0 = min(n_hom1, n_hom2)
    rare = 2 * homr0 + n_het
    # Start at (about) the most likely het count and recur outwards: stays finite for any n.
    mid = int(rare * (2 * n - rare) / (2 * n))
    if (rare - mid) % 2:
        mid += 1
    if mid > rare:
        mid -= 2

    def walk(step: int):
        """Yield relative probabilities from ``mid`` outwards (step -1 down, +1 up)."""
        p, h = 1.0, float(mid)
        homr = float((rare - mid) // 2)
        homc = float(n - mid) - homr
        while True:
            if step < 0:
                if h < 1.5:
                    return
                p *= h * (h - 1.0) / (4.0 * (homr + 1.0) * (homc + 1.0))
                h, homr, homc = h - 2.0, homr + 1.0, homc + 1.0
            else:
                if homr < 0.5:
                    return
                p *= 4.0 * homr * homc / ((h + 2.0) * (h + 1.0))
                h, homr, homc = h + 2.0, homr - 1.0, homc - 1.0
            yield int(h), p

    p_obs = 1.0
    if n_het != mid:
        for h, p in walk(1 if n_het > mid else -1):
            if h == n_het:
                p_obs = p
                break
    hi_lim, lo_lim = p_obs * (1 + TIE_TOLERANCE), p_obs * (1 - TIE_TOLERANCE)
    total, tail, ties = 1.0, 0.0, 0
    if 1.0 <= hi_lim:
        tail, ties = 1.0, int(1.0 >= lo_lim)
    for step in (-1, 1):
        for _, p in walk(step):
            total += p
            if p <= hi_lim:
                tail += p
                ties += p >= lo_lim
                # Past the observed count the terms fall geometrically.
                if p == 0.0 or p < tail * 1e-17:
                    break
    pv = (tail - 0.5 * p_obs * ties) / total if midp else tail / total
    return min(1.0, pv)


def _as_counts(*arrays: np.ndarray) -> list[np.ndarray]:
    out = [np.ascontiguousarray(a, dtype=np.int64).ravel() for a in arrays]
    if any(a.size != out[0].size for a in out) or any(a.size and a.min() < 0 for a in out):
        raise ValueError("genotype count arrays must have equal lengths and be non-negative")
    return out


def hwe_exact_p_array(
    n_het: np.ndarray, n_hom1: np.ndarray, n_hom2: np.ndarray, midp: bool = False
) -> np.ndarray:
    """Vectorised ``hwe_exact_p``: count arrays (n_snps,) -> p-values (n_snps,) float64."""
    het, hom1, hom2 = _as_counts(n_het, n_hom1, n_hom2)
    out = np.empty(het.size, dtype=np.float64)
    if _ext is not None:
        _ext.hwe_pvalues(het, hom1, hom2, bool(midp), out)
    else:  # pragma: no cover - fallback without the compiled module
        for i, (a, b, c) in enumerate(zip(het.tolist(), hom1.tolist(), hom2.tolist(), strict=True)):
            out[i] = hwe_exact_p(a, b, c, midp)
    return out


def hwe_fails(
    n_het: np.ndarray, n_hom1: np.ndarray, n_hom2: np.ndarray, threshold: float, midp: bool = False
) -> np.ndarray:
    """PLINK's ``--hwe threshold`` decision per SNP: True where p < threshold (1 - 2^-44).

    Count arrays (n_snps,) -> bool (n_snps,). The compiled path stops summing as soon as the
    decision is certain, which is what makes it fast at array scale.
    """
    het, hom1, hom2 = _as_counts(n_het, n_hom1, n_hom2)
    thresh = float(threshold) * (1 - PLINK_SMALL_EPSILON)
    if _ext is not None:
        out = np.empty(het.size, dtype=np.uint8)
        _ext.hwe_fail_mask(het, hom1, hom2, thresh, bool(midp), out)
        return out.astype(bool)
    fails = hwe_exact_p_array(het, hom1, hom2, midp) < thresh
    for i in np.flatnonzero(~fails):
        fails[i] = _plink_shortcut_fails(int(het[i]), int(hom1[i]), int(hom2[i]), thresh, midp)
    return fails


def _plink_shortcut_fails(het: int, hom1: int, hom2: int, thresh: float, midp: bool) -> bool:
    """PLINK 1.9's ``--hwe`` also fails a SNP whose p passes when the observed count and the
    first configuration beyond the mode do not reach the threshold and neither tail has a
    configuration after its first one (it never re-checks the first near-side term)."""
    n = het + hom1 + hom2
    homr, homc = min(hom1, hom2), max(hom1, hom2)
    rare = 2 * homr + het
    if n == 0 or het * 2 * n == rare * (2 * n - rare):
        return False
    up = het * 2 * n < rare * (2 * n - rare)  # the mode lies above the observed count
    h, r, c, p, centre, tail, ties = float(het), float(homr), float(homc), 1.0, 0.0, 1.0, 1
    while (r >= 0.5) if up else (h >= 1.5):
        if up:
            p *= 4.0 * r * c / ((h + 2.0) * (h + 1.0))
            h, r, c = h + 2.0, r - 1.0, c - 1.0
        else:
            p *= h * (h - 1.0) / (4.0 * (r + 1.0) * (c + 1.0))
            h, r, c = h - 2.0, r + 1.0, c + 1.0
        if p <= 1.0 + TIE_TOLERANCE:
            tail += p
            ties += p >= 1.0 - TIE_TOLERANCE
            break
        centre += p
    if tail * (1.0 - thresh) - (0.5 * ties if midp else 0.0) >= thresh * centre:
        return False
    near_more = het >= 4 if up else homr > 1
    far_more = r > 0.5 if up else h > 1.5
    return not near_more and not far_more
