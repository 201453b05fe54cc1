"""HWE exact test: exact rational reference (1e-12), plink1.9 --hardy, threshold decisions."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from preprocessing.hwe import hwe_exact_p, hwe_exact_p_array, hwe_fails
from preprocessing.plink import read_plink
from preprocessing.qc import FOUNDER_CONTROLS, FOUNDERS, group_counts, sample_groups
from tests.preprocessing.plink_cases import needs_plink, random_fileset, run_plink


def exact_p(het: int, hom1: int, hom2: int, midp: bool = False) -> float:
    """The definition, in exact rational arithmetic."""
    n = het + hom1 + hom2
    if n == 0:
        return 0.5 if midp else 1.0
    rare = 2 * min(hom1, hom2) + het
    probs = {}
    for h in range(rare % 2, rare + 1, 2):
        r = (rare - h) // 2
        probs[h] = Fraction(
            math.factorial(n) * 2**h,
            math.factorial(r) * math.factorial(h) * math.factorial(n - h - r),
        )
    obs = probs[het]
    tail = sum(p for p in probs.values() if p <= obs)
    ties = sum(1 for p in probs.values() if p == obs)
    total = sum(probs.values())
    return float((tail - Fraction(ties, 2) * obs) / total if midp else tail / total)


@pytest.mark.parametrize("midp", [False, True])
def test_matches_exact_rationals_to_1e12(midp: bool) -> None:
    rng = np.random.default_rng(0)
    cases = [(0, 0, 0), (1, 0, 0), (0, 5, 0), (2, 1, 1), (10, 0, 0), (0, 10, 10), (57, 2, 41)]
    cases += [
        tuple(int(x) for x in rng.multinomial(n, rng.dirichlet([1, 1, 1])))
        for n in rng.integers(1, 150, 300)
    ]
    het, hom1, hom2 = (np.array(c) for c in zip(*cases, strict=True))
    vec = hwe_exact_p_array(het, hom1, hom2, midp)
    for (a, b, c), v in zip(cases, vec, strict=True):
        ref = exact_p(a, b, c, midp)
        assert hwe_exact_p(a, b, c, midp) == pytest.approx(ref, rel=1e-12, abs=0)
        assert v == pytest.approx(ref, rel=1e-12, abs=0)


def test_threshold_decision_is_p_below_threshold() -> None:
    rng = np.random.default_rng(1)
    het, hom1, hom2 = (rng.integers(4, 300, 20000) for _ in range(3))
    for midp in (False, True):
        p = hwe_exact_p_array(het, hom1, hom2, midp)
        for thr in (1e-5, 1e-2, 0.3, 1e-80):
            fails = hwe_fails(het, hom1, hom2, thr, midp)
            assert (fails == (p < thr * (1 - 2.0**-44))).all()


def test_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        hwe_exact_p(-1, 2, 3)


def _round4(x: float) -> float:
    return float(f"{x:.4g}")


@needs_plink
@pytest.mark.parametrize("midp", [False, True])
def test_hardy_report_of_plink(tmp_path: Path, midp: bool) -> None:
    """Counts (ALL = founders, UNAFF = founder controls) and p-values equal --hardy's
    (which prints 4 significant digits); chrX uses non-male founders."""
    bfile = random_fileset(tmp_path / "h", n_samples=150, seed=9, missing=0.01)
    run_plink(
        "--bfile", str(bfile), "--hardy", *(["midp"] if midp else []), "--keep-allele-order",
        "--allow-no-sex", "--out", str(tmp_path / "h"),
    )  # fmt: skip
    fs = read_plink(bfile)
    groups = sample_groups(fs, np.ones(fs.n_samples, bool), include_nonctrl=False)
    counts = group_counts(fs, groups)
    row_of = {s: i for i, s in enumerate(fs.bim.strings(1))}
    n_checked = 0
    for line in (tmp_path / "h.hwe").read_text().splitlines()[1:]:
        chrom, snp, test, _, _, geno, _, _, p = line.split()
        if test == "AFF" or chrom in ("24", "26") or p == "NA":
            continue
        j = row_of[snp]
        group = FOUNDERS if test == "ALL" else FOUNDER_CONTROLS
        c = counts[group, :3, j].astype(int)
        if chrom == "23":
            c = c - counts[group + 3, :3, j]
        hom1, het, hom2 = (int(x) for x in geno.split("/"))
        assert (hom1, het, hom2) == tuple(c), (snp, test)
        assert _round4(hwe_exact_p(het, hom1, hom2, midp)) == pytest.approx(float(p), rel=1e-12)
        n_checked += 1
    assert n_checked > 300
