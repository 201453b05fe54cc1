"""Filesets for QC tests and a runner for the ``plink1.9`` reference."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from preprocessing.plink_io import Sample, Variant, write_plink

PLINK = shutil.which("plink1.9")
needs_plink = pytest.mark.skipif(PLINK is None, reason="plink1.9 (the reference) is not installed")


def run_plink(*args: str) -> subprocess.CompletedProcess:
    """Run plink1.9 with ``args``; the caller checks the outputs."""
    assert PLINK is not None
    return subprocess.run(
        [PLINK, "--threads", "1", *args], capture_output=True, text=True, check=False
    )


def random_fileset(
    prefix: Path,
    n_samples: int = 61,
    chroms: tuple[str, ...] = ("1", "1", "2", "X", "Y", "MT", "XY", "22"),
    snps_per_chrom: int = 40,
    seed: int = 0,
    missing: float = 0.03,
    phenotype: str = "cc",
) -> Path:
    """A fileset with every situation the filters treat specially: males/females/unknown sex,
    founders and non-founders, cases/controls/missing phenotypes, X/Y/MT/XY variants, rare and
    monomorphic SNPs, HWE departures, very missing SNPs and samples, unsorted positions."""
    rng = np.random.default_rng(seed)
    chrom_list: list[str] = []
    for c in dict.fromkeys(chroms):
        chrom_list += [c] * snps_per_chrom
    n_snps = len(chrom_list)
    maf = rng.choice([0.0, 0.004, 0.02, 0.05, 0.2, 0.45], n_snps)
    dosage = rng.binomial(2, maf[:, None], (n_snps, n_samples))
    # HWE departures: all heterozygous, or no heterozygotes
    dev = rng.random(n_snps) < 0.1
    dosage[dev] = np.where(rng.random((int(dev.sum()), n_samples)) < 0.6, 1, dosage[dev])
    noh = rng.random(n_snps) < 0.05
    dosage[noh] = rng.choice([0, 2], (int(noh.sum()), n_samples))
    g = dosage.astype(np.int8)
    miss_rate = np.full((n_snps, n_samples), missing)
    miss_rate[rng.random(n_snps) < 0.08] = 0.12  # some SNPs fail --geno
    miss_rate[:, rng.random(n_samples) < 0.08] = 0.2  # some samples fail --mind
    g[rng.random((n_snps, n_samples)) < miss_rate] = -1
    pos = rng.integers(1, 10_000_000, n_snps)
    variants = [
        Variant(c, f"rs{j}", 0.0, int(p), *rng.choice(list("ACGT"), 2, replace=False))
        for j, (c, p) in enumerate(zip(chrom_list, pos, strict=True))
    ]
    samples = []
    for i in range(n_samples):
        sex = int(rng.choice([1, 2, 0], p=[0.45, 0.45, 0.1]))
        if phenotype == "cc":
            pheno: float = float(rng.choice([1, 2, -9], p=[0.45, 0.45, 0.1]))
        elif phenotype == "cases":
            pheno = 2
        elif phenotype == "quant":
            pheno = round(float(rng.normal()), 3)
        else:
            pheno = -9
        father, mother = ("0", "0")
        if i > 4 and rng.random() < 0.1:
            father, mother = f"i{i - 3}", f"i{i - 2}"
        samples.append(Sample(f"f{i}", f"i{i}", father, mother, sex, pheno))
    write_plink(prefix, g, variants, samples)
    return prefix


def read_outputs(prefix: Path) -> dict[str, bytes]:
    """The .bed/.bim/.fam bytes of a fileset, and its .irem if present."""
    out = {}
    for ext in (".bed", ".bim", ".fam", ".irem"):
        p = prefix.with_name(prefix.name + ext)
        if p.exists():
            out[ext] = p.read_bytes()
    return out
