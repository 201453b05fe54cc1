"""Genotypes, phenotypes and planted QC failures of the synthetic cohort.

Everything here is in memory; ``simulations.cohort`` writes it to disk. Genotype matrices
are SNP-major ``(n_snps, n_samples)`` int8 counts of the .bim A1 allele, -1 = missing, as in
``preprocessing.plink_io``.

Design of the array (identical at every site unless a site drops the APOE SNPs):
- catalog SNPs (the AD panel): genotypes drawn per subject; they set the liability;
- background SNPs with a realistic MAF spectrum on chromosomes 1-22 and X (males
  hemizygous), made to pass QC by construction;
- planted failures: high missingness (``--geno``), SNPs out of Hardy-Weinberg equilibrium in
  controls only (``--hwe``), rare and monomorphic SNPs (``--maf``) and samples with high
  missingness (``--mind``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from conf.schema import CohortConfig, QCConfig
from preprocessing import panel
from preprocessing.hwe import hwe_exact_p
from preprocessing.plink_io import Sample, Variant

DX_NAMES = ("CN", "MCI", "AD")
# .fam phenotype: CN controls, AD cases, MCI left missing (as in CN-vs-AD GWAS of ADNI).
FAM_PHENOTYPE = {"CN": 1, "MCI": -9, "AD": 2}
APOE_SNPS = ("rs429358", "rs7412")
# APOE haplotypes as (rs429358, rs7412) alleles: e2 = T-T, e3 = T-C, e4 = C-C.
APOE_HAPLOTYPES = {2: ("T", "T"), 3: ("T", "C"), 4: ("C", "C")}
TRANSITION = {"A": "G", "G": "A", "C": "T", "T": "C"}
COMPLEMENT = {"A": "T", "T": "A", "C": "G", "G": "C"}
# GRCh37 chromosome lengths (bp), 1-22 and X (23).
CHROM_LENGTHS = (
    249250621,
    243199373,
    198022430,
    191154276,
    180915260,
    171115067,
    159138663,
    146364022,
    141213431,
    135534747,
    135006516,
    133851895,
    115169878,
    107349540,
    102531392,
    90354753,
    81195210,
    78077248,
    59128983,
    63025520,
    48129895,
    51304566,
    155270560,
)
CATEGORIES = ("panel", "background", "high_missing", "hwe", "rare", "monomorphic")


def load_catalog(path: str | Path | None = None) -> pd.DataFrame:
    """The AD candidate SNP catalog as a table (rsid, gene, chrom, pos_grch37, risk_allele);
    positions the catalog lacks are 0 (PLINK's "unknown")."""
    rows = panel.load_catalog(path or None)
    return pd.DataFrame(
        {
            "rsid": [r.rsid for r in rows],
            "gene": [r.gene for r in rows],
            "chrom": [int(r.chrom) for r in rows],
            "pos_grch37": [r.pos or 0 for r in rows],
            "risk_allele": [r.risk_allele for r in rows],
        }
    )


@dataclass
class SnpTable:
    """The array's SNPs in file order, with their population A1 frequency and category."""

    variants: list[Variant]
    freq_a1: np.ndarray  # (n_snps,) population frequency of A1
    category: np.ndarray  # (n_snps,) one of CATEGORIES
    risk_is_a1: np.ndarray  # (n_snps,) bool, panel SNPs only
    prs_weight: np.ndarray  # (n_snps,) log-odds per risk allele, 0 outside the panel

    @property
    def ids(self) -> list[str]:
        return [v.snp_id for v in self.variants]


@dataclass
class SitePopulation:
    """One site's subjects: genotypes (A1 counts, complete) and phenotypes."""

    site: int
    ptid: list[str]
    sex: np.ndarray  # 1 male, 2 female
    age: np.ndarray
    apoe: np.ndarray  # (n, 2) APOE alleles 2/3/4, sorted
    genotypes: np.ndarray  # (n_snps, n) int8 A1 counts before missingness
    prs_z: np.ndarray
    genetic_liability: np.ndarray
    liability: np.ndarray
    dx: np.ndarray  # (n,) index into DX_NAMES
    bad_sample: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def e4(self) -> np.ndarray:
        return (self.apoe == 4).sum(axis=1)


def build_snp_table(cfg: CohortConfig, rng: np.random.Generator) -> SnpTable:
    """Choose positions, alleles, frequencies and QC categories of every SNP on the array."""
    cat = load_catalog(cfg.snp_catalog or None)
    n_bg = cfg.n_background_snps
    counts = {
        "high_missing": int(round(cfg.planted_high_missing_frac * n_bg)),
        "hwe": int(round(cfg.planted_hwe_frac * n_bg)),
        "rare": int(round(cfg.planted_rare_frac * n_bg)),
        "monomorphic": int(round(cfg.planted_monomorphic_frac * n_bg)),
    }
    n_clean = n_bg - sum(counts.values())
    if n_clean < 0:
        raise ValueError("planted QC failure fractions add up to more than all background SNPs")
    kinds = np.array(["background"] * n_clean + [k for k, n in counts.items() for _ in range(n)])
    rng.shuffle(kinds)

    # Background chromosomes proportional to length; a share on X.
    lengths = np.array(CHROM_LENGTHS[:22], dtype=float)
    n_x = int(round(cfg.chrx_fraction * n_bg))
    chroms = np.concatenate(
        [rng.choice(np.arange(1, 23), size=n_bg - n_x, p=lengths / lengths.sum()), np.full(n_x, 23)]
    )
    taken = set(zip(cat["chrom"], cat["pos_grch37"], strict=True))
    pos = np.empty(n_bg, dtype=np.int64)
    for i, c in enumerate(chroms):
        while True:
            p = int(rng.integers(100_000, CHROM_LENGTHS[c - 1] - 100_000))
            if (c, p) not in taken:
                taken.add((c, p))
                pos[i] = p
                break
    # MAF spectrum of a genotyping array: many common SNPs, a tail towards 5%; X kept common.
    maf = 0.05 + 0.45 * rng.beta(0.9, 1.3, size=n_bg)
    maf[chroms == 23] = np.maximum(maf[chroms == 23], 0.2)
    kinds[chroms == 23] = "background"  # planted failures stay on autosomes
    maf[kinds == "hwe"] = rng.uniform(0.4, 0.5, size=(kinds == "hwe").sum())
    maf[kinds == "rare"] = 0.004
    maf[kinds == "monomorphic"] = 0.0
    pairs = [("A", "G"), ("C", "T"), ("G", "T"), ("A", "C"), ("A", "T"), ("C", "G")]
    pair_p = np.array([0.33, 0.33, 0.14, 0.14, 0.03, 0.03])

    rows: list[tuple] = []
    for i in range(n_bg):
        a, b = pairs[rng.choice(len(pairs), p=pair_p)]
        if rng.random() < 0.5:
            a, b = b, a
        rows.append(
            (
                int(chroms[i]),
                int(pos[i]),
                f"{chroms[i]}:{pos[i]}",
                a,
                b,
                maf[i],
                str(kinds[i]),
                False,
                0.0,
            )
        )
    # Panel SNPs: risk allele from the catalog, other allele its transition partner
    # (never strand-ambiguous). A1 is the population minor allele, as PLINK writes it.
    for r in cat.itertuples(index=False):
        risk = r.risk_allele
        other = TRANSITION[risk]
        if r.rsid == "rs429358":
            f_risk = cfg.apoe_freqs[2]
        elif r.rsid == "rs7412":
            f_risk = 1.0 - cfg.apoe_freqs[0]
        else:
            f_risk = float(rng.uniform(0.15, 0.6))
        risk_is_a1 = f_risk <= 0.5
        a1, a2 = (risk, other) if risk_is_a1 else (other, risk)
        f_a1 = f_risk if risk_is_a1 else 1.0 - f_risk
        weight = 0.0 if r.rsid in APOE_SNPS else float(np.log(rng.uniform(1.08, 1.35)))
        rows.append(
            (int(r.chrom), int(r.pos_grch37), r.rsid, a1, a2, f_a1, "panel", risk_is_a1, weight)
        )
    rows.sort(key=lambda x: (x[0], x[1], x[2]))
    return SnpTable(
        variants=[Variant(str(c), sid, 0.0, p, a1, a2) for c, p, sid, a1, a2, *_ in rows],
        freq_a1=np.array([r[5] for r in rows]),
        category=np.array([r[6] for r in rows]),
        risk_is_a1=np.array([r[7] for r in rows]),
        prs_weight=np.array([r[8] for r in rows]),
    )


def _draw_counts(
    freq: np.ndarray, n: int, haploid: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Hardy-Weinberg genotypes (n_snps, n); haploid samples (males on X) get 0 or 2."""
    g = (rng.random((freq.size, n, 2)) < freq[:, None, None]).sum(axis=2).astype(np.int8)
    if haploid.any():
        rows = haploid.nonzero()[0]
        g[haploid] = np.where(rng.random(rows.size) < freq[rows], 2, 0)
    return g


def simulate_site_population(
    cfg: CohortConfig,
    snps: SnpTable,
    site: int,
    n: int,
    thresholds: tuple[float, float],
    prs_moments: tuple[float, float],
    rng: np.random.Generator,
) -> SitePopulation:
    """Draw subjects, their genotypes and diagnoses at one site."""
    sex = rng.choice([1, 2], size=n)
    age = np.clip(rng.normal(73.5, 7.0, size=n), 55.0, 92.0).round(1)
    # Site-level drift of allele frequencies (population structure between hospitals).
    freq = snps.freq_a1.copy()
    drift = snps.category == "background"
    freq[drift] = np.clip(freq[drift] + rng.normal(0, 0.015, drift.sum()), 0.05, 0.95)
    x_rows = np.array([v.chrom == "23" for v in snps.variants])
    haploid = x_rows[:, None] & (sex == 1)[None, :]
    g = _draw_counts(freq, n, haploid, rng)

    # APOE from haplotypes, so rs429358 and rs7412 stay in their real linkage.
    apoe = np.sort(rng.choice([2, 3, 4], size=(n, 2), p=np.asarray(cfg.apoe_freqs)), axis=1)
    ids = snps.ids
    for k, rsid in enumerate(APOE_SNPS):
        j = ids.index(rsid)
        v = snps.variants[j]
        g[j] = sum(
            (np.vectorize(lambda a, k=k: APOE_HAPLOTYPES[a][k])(apoe[:, h]) == v.a1)
            for h in range(2)
        )

    risk = np.where(snps.risk_is_a1[:, None], g, 2 - g)
    prs = (snps.prs_weight[:, None] * risk).sum(axis=0)
    prs_z = (prs - prs_moments[0]) / prs_moments[1]
    e4 = (apoe == 4).sum(axis=1)
    genetic = cfg.effect_e4 * e4 + cfg.effect_prs * prs_z
    age_z = (age - 73.5) / 7.0
    shift = cfg.site_liability_shift[site % len(cfg.site_liability_shift)]
    liability = genetic + cfg.effect_age * age_z + rng.normal(0, 1, n) + shift
    dx = np.searchsorted(np.asarray(thresholds), liability)
    ptid = [f"{site + 1:03d}_S_{i + 1:04d}" for i in range(n)]
    return SitePopulation(site, ptid, sex, age, apoe, g, prs_z, genetic, liability, dx)


def population_moments(
    cfg: CohortConfig, snps: SnpTable, rng: np.random.Generator, n: int = 100_000
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Liability thresholds giving the configured CN/MCI/AD proportions, and PRS moments."""
    w = snps.prs_weight
    f_risk = np.where(snps.risk_is_a1, snps.freq_a1, 1 - snps.freq_a1)
    prs_mean = float((2 * f_risk * w).sum())
    prs_sd = float(np.sqrt((2 * f_risk * (1 - f_risk) * w**2).sum())) or 1.0
    e4 = (rng.random((n, 2)) < cfg.apoe_freqs[2]).sum(axis=1)
    prs_z = rng.normal(0, 1, n)
    age_z = (np.clip(rng.normal(73.5, 7.0, n), 55, 92) - 73.5) / 7.0
    shifts = rng.choice(np.resize(np.asarray(cfg.site_liability_shift, float), cfg.n_sites), n)
    liab = (
        cfg.effect_e4 * e4 + cfg.effect_prs * prs_z + cfg.effect_age * age_z + rng.normal(0, 1, n)
    )
    liab += shifts
    p = np.cumsum(cfg.dx_proportions)[:2] / np.sum(cfg.dx_proportions)
    t1, t2 = np.quantile(liab, p)
    return (float(t1), float(t2)), (prs_mean, prs_sd)


def plant_missingness(
    cfg: CohortConfig, snps: SnpTable, pop: SitePopulation, qc: QCConfig, rng: np.random.Generator
) -> np.ndarray:
    """Apply missing calls and the planted genotype patterns; return the observed matrix.

    Guarantees (checked against ``qc`` thresholds): bad samples fail ``--mind`` and the others
    pass; high-missing SNPs fail ``--geno`` on the remaining samples and every other SNP passes
    it; rare / monomorphic SNPs fail ``--maf``; clean SNPs keep a MAF of at least 2x ``maf``.
    """
    n = pop.genotypes.shape[1]
    g = pop.genotypes.copy()
    cat = snps.category
    n_bad = int(round(cfg.planted_bad_sample_frac * n))
    bad = np.zeros(n, bool)
    bad[rng.choice(n, size=n_bad, replace=False)] = True
    good = ~bad
    n_good = int(good.sum())

    # Monomorphic and rare SNPs: at most one minor allele copy among the good samples, and only
    # where one copy is still below the MAF threshold.
    for j in np.flatnonzero((cat == "rare") | (cat == "monomorphic")):
        g[j] = 2 if snps.freq_a1[j] > 0.5 else 0
        if cat[j] == "rare" and 1.0 / (2 * n_good) < qc.maf:
            g[j, rng.choice(np.flatnonzero(good))] = 1
    # HWE failures in controls only: every control homozygous, half each way; others HWE.
    controls = pop.dx == 0
    for j in np.flatnonzero(cat == "hwe"):
        idx = rng.permutation(np.flatnonzero(controls))
        g[j, idx] = 0
        g[j, idx[: idx.size // 2]] = 2
    # Clean SNPs keep a comfortable MAF at this site (redraw the rare unlucky ones).
    clean = (cat == "background") | (cat == "panel")
    for j in np.flatnonzero(clean & (cat == "background")):
        for _ in range(100):
            if _site_maf(g[j, good], snps.variants[j], pop.sex[good]) >= 2 * qc.maf:
                break
            g[j] = _draw_counts(snps.freq_a1[j : j + 1], n, np.zeros((1, n), bool), rng)[0]
            if snps.variants[j].chrom == "23":
                g[j, pop.sex == 1] = np.where(g[j, pop.sex == 1] >= 1, 2, 0)

    miss = rng.random(g.shape) < cfg.geno_missing_rate
    miss[:, bad] = rng.random((g.shape[0], n_bad)) < rng.uniform(0.12, 0.25, n_bad)
    hi = np.flatnonzero(cat == "high_missing")
    # Clean and other planted SNPs: at most half the --geno threshold among good samples.
    cap = int(np.floor(0.5 * qc.geno * n_good))
    for j in np.flatnonzero(cat != "high_missing"):
        m = np.flatnonzero(miss[j] & good)
        if m.size > cap:
            miss[j, rng.choice(m, size=m.size - cap, replace=False)] = False
    # High-missing SNPs: 15-40% of the good samples missing.
    for j in hi:
        miss[j, good] = False
        k = int(np.ceil(rng.uniform(0.15, 0.40) * n_good))
        miss[j, rng.choice(np.flatnonzero(good), size=k, replace=False)] = True
    # Rare SNPs keep their single minor copy called.
    for j in np.flatnonzero(cat == "rare"):
        miss[j, (g[j] == 1) & good] = False
    if ((miss[:, good].mean(axis=0)) > 0.5 * qc.mind).any():
        raise RuntimeError("a good sample reached half the --mind threshold; lower the rates")
    pop.bad_sample = bad
    return np.where(miss, -1, g).astype(np.int8)


def _site_maf(calls: np.ndarray, variant: Variant, sex: np.ndarray) -> float:
    """Minor allele frequency of one SNP's calls (0/1/2 A1 counts), males haploid on X."""
    ok = calls >= 0
    if variant.chrom == "23":
        male = sex == 1
        a1 = calls[ok & ~male].sum() + (calls[ok & male] // 2).sum()
        n_all = 2 * (ok & ~male).sum() + (ok & male).sum()
    else:
        a1 = calls[ok].sum()
        n_all = 2 * ok.sum()
    if n_all == 0:
        return 0.0
    f = a1 / n_all
    return float(min(f, 1 - f))


def hwe_controls_p(calls: np.ndarray, dx: np.ndarray, sex: np.ndarray, chrom: str) -> float:
    """PLINK's --hwe p-value over controls (females only on X) for one SNP's calls."""
    keep = (dx == 0) & (calls >= 0)
    if chrom == "23":
        keep &= sex == 2
    c = calls[keep]
    return hwe_exact_p(int((c == 1).sum()), int((c == 2).sum()), int((c == 0).sum()))


def samples_for_fam(pop: SitePopulation) -> list[Sample]:
    """.fam rows: FID = IID = PTID, founders, sex, CN/AD phenotype (MCI missing)."""
    return [
        Sample(fid=p, iid=p, sex=int(s), phenotype=FAM_PHENOTYPE[DX_NAMES[d]])
        for p, s, d in zip(pop.ptid, pop.sex, pop.dx, strict=True)
    ]


def expected_qc(
    snps: SnpTable, calls: np.ndarray, dx: np.ndarray, sex: np.ndarray, qc: QCConfig
) -> dict:
    """What ``plink1.9 --mind --geno --hwe --maf`` removes from these calls, filter by filter.

    An independent statement of PLINK 1.9's semantics (DESIGN.md section 5) over the
    generator's own matrices, used only to write the truth folder.
    """
    ids = np.array(snps.ids)
    chrom = np.array([v.chrom for v in snps.variants])
    ok = calls >= 0
    bad = (~ok).mean(axis=0) > qc.mind
    keep_s = ~bad
    c = calls[:, keep_s]
    geno_fail = (c < 0).mean(axis=1) > qc.geno
    removed: dict[str, list[str]] = {"geno": ids[geno_fail].tolist()}
    left = ~geno_fail
    hwe_fail = np.zeros(len(ids), bool)
    for j in np.flatnonzero(left):
        p = hwe_controls_p(c[j], dx[keep_s], sex[keep_s], chrom[j])
        hwe_fail[j] = p < qc.hwe * (1 - 2.0**-44)
    removed["hwe"] = ids[hwe_fail].tolist()
    left &= ~hwe_fail
    maf_fail = np.zeros(len(ids), bool)
    for j in np.flatnonzero(left):
        maf_fail[j] = _site_maf(c[j], snps.variants[j], sex[keep_s]) < qc.maf
    removed["maf"] = ids[maf_fail].tolist()
    left &= ~maf_fail
    return {
        "n_samples": int(calls.shape[1]),
        "n_snps": int(calls.shape[0]),
        "removed_sample_idx": np.flatnonzero(bad).tolist(),
        "removed_snps": removed,
        "counts": {"mind": int(bad.sum()), **{k: len(v) for k, v in removed.items()}},
        "n_snps_kept": int(left.sum()),
    }
