"""Federated QC from per-site counts equals plink1.9 on the merged fileset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from preprocessing.errors import G2IError
from preprocessing.federated_qc import (
    SiteCounts,
    apply_keep_list,
    federated_variant_qc,
    local_mind,
    site_counts,
)
from preprocessing.plink import read_plink
from preprocessing.qc import (
    ALL,
    FOUNDERS,
    MALE_FOUNDERS,
    SampleGroups,
    group_counts,
    qc_config,
    run_qc,
)
from tests.preprocessing.plink_cases import needs_plink, random_fileset, read_outputs, run_plink
from tests.preprocessing.test_qc import plink_counts

pytestmark = needs_plink


def plink_samples(bfile: Path, flag: str, rows: np.ndarray, out: Path) -> Path:
    """``plink1.9 --keep`` / ``--remove`` of the samples at ``rows`` (same .bim)."""
    fam = read_plink(bfile).fam
    ids = out.with_name(f"{out.name}-samples.txt")
    ids.write_text("".join(f"{fam.fid[i]} {fam.iid[i]}\n" for i in rows))
    proc = run_plink(
        "--bfile", str(bfile), flag, str(ids), "--keep-allele-order", "--make-bed",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    return out


def split_sites(bfile: Path, tmp: Path, n_sites: int = 3, seed: int = 0) -> list[Path]:
    """Split the samples of ``bfile`` into sites (same .bim everywhere)."""
    site_of = np.random.default_rng(seed).integers(0, n_sites, read_plink(bfile).fam.n)
    return [
        plink_samples(bfile, "--keep", np.flatnonzero(site_of == k), tmp / f"site-{k}")
        for k in range(n_sites)
    ]


@pytest.mark.parametrize(
    "flags",
    [
        dict(mind=0.1, geno=0.05, hwe=1e-3, maf=0.01, mods=()),
        dict(mind=0.1, geno=0.1, hwe=0.01, maf=0.05, mods=("midp",)),
        dict(mind=0.1, hwe=0.05, maf=0.01, mods=("include-nonctrl",)),
    ],
    ids=["paper", "midp", "include-nonctrl"],
)
def test_three_sites_give_plinks_pooled_result(flags: dict, tmp_path: Path) -> None:
    merged = random_fileset(tmp_path / "merged", n_samples=90, seed=11)
    sites = split_sites(merged, tmp_path)
    cfg = qc_config(flags["mind"], flags.get("geno"), flags["maf"], flags["hwe"], flags["mods"])
    # what travels: flat integer arrays only
    shared = [SiteCounts.from_arrays(site_counts(s, cfg).to_arrays()) for s in sites]
    decision = federated_variant_qc(shared, cfg)

    args = [
        "--mind",
        "0.1",
        "--maf",
        repr(flags["maf"]),
        "--hwe",
        repr(flags["hwe"]),
        *flags["mods"],
    ]
    if "geno" in flags:
        args += ["--geno", repr(flags["geno"])]
    ref = tmp_path / "ref"
    assert run_plink("--bfile", str(merged), *args, "--make-bed", "--out", str(ref)).returncode == 0
    counts = plink_counts(Path(f"{ref}.log").read_text())
    summary = decision.summary()
    assert summary["removed"] == {k: counts[k] for k in ("geno", "hwe", "maf")}
    assert summary["removed_mind"] == counts["mind"]
    ref_bim = Path(f"{ref}.bim").read_bytes()
    for k, site in enumerate(sites):
        apply_keep_list(site, decision, cfg, tmp_path / f"qc-{k}")
        # the site's QC'd .bim (kept SNPs, pooled A1 = minor orientation) is plink's merged one
        assert Path(f"{tmp_path / f'qc-{k}'}.bim").read_bytes() == ref_bim
        # and its genotypes are plink's merged output restricted to the site's samples
        sub = tmp_path / f"ref-{k}"
        run_plink(
            "--bfile", str(ref), "--keep", str(tmp_path / f"site-{k}-samples.txt"),
            "--keep-allele-order", "--make-bed", "--out", str(sub),
        )  # fmt: skip
        mine = read_outputs(tmp_path / f"qc-{k}")
        theirs = read_outputs(sub)
        assert mine[".bed"] == theirs[".bed"] and mine[".fam"] == theirs[".fam"]


def test_sites_with_different_arrays_are_refused(tmp_path: Path) -> None:
    a = random_fileset(tmp_path / "a", seed=1)
    b = random_fileset(tmp_path / "b", seed=1, snps_per_chrom=41)
    cfg = qc_config(maf=0.01)
    with pytest.raises(G2IError, match="other variants"):
        federated_variant_qc([site_counts(a, cfg), site_counts(b, cfg)], cfg)


@pytest.mark.parametrize(("n_samples", "dtype"), [(61, np.uint8), (300, np.uint16)])
def test_wire_counts_are_narrow_and_round_trip_exactly(
    n_samples: int, dtype: type, tmp_path: Path
) -> None:
    bfile = random_fileset(tmp_path / "s", n_samples=n_samples, seed=3)
    cfg = qc_config(mind=0.1, geno=0.05, maf=0.01, hwe=1e-3)
    mine = site_counts(bfile, cfg)
    arrays = mine.to_arrays()
    assert arrays["counts"].dtype == arrays["male-counts"].dtype == dtype
    # three rows per group sent: overall, founders, founder controls (all differ here)
    assert arrays["counts"].shape == (9, mine.chrom.size)
    back = SiteCounts.from_arrays(arrays)
    np.testing.assert_array_equal(back.chrom, mine.chrom)
    assert back.present.all() and back.n_samples == n_samples
    # the server sees the site's GroupCounts exactly, missing calls included
    fs = read_plink(bfile)
    removed = local_mind(fs, cfg.mind)
    fam = fs.fam
    groups = SampleGroups(~removed, fam.founder, fam.control, fam.male, fam.case_control)
    np.testing.assert_array_equal(back.counts, group_counts(fs, groups))


def test_only_the_groups_the_filters_read_are_sent(tmp_path: Path) -> None:
    bfile = random_fileset(tmp_path / "s", seed=4)
    maf_only = qc_config(maf=0.01)  # no --geno, no --hwe: founder frequencies only
    arrays = site_counts(bfile, maf_only).to_arrays()
    assert arrays["counts"].shape[0] == 3
    assert list(np.flatnonzero(arrays["groups"] >= 0)) == [FOUNDERS, MALE_FOUNDERS]
    shared = [SiteCounts.from_arrays(arrays)]
    assert federated_variant_qc(shared, maf_only).summary()["removed"]["maf"] > 0
    # a server with other thresholds than the sites is told so instead of reading zeros
    with pytest.raises(G2IError, match="same QC thresholds"):
        federated_variant_qc(shared, qc_config(maf=0.01, geno=0.05))


def test_a_group_equal_to_another_travels_once(tmp_path: Path) -> None:
    # founders only and a quantitative phenotype: founders = everyone, no control group
    bfile = random_fileset(tmp_path / "s", seed=5, phenotype="quant")
    fs = read_plink(bfile)
    assert fs.fam.founder.sum() < fs.n_samples  # the generator plants some non-founders
    ref = tmp_path / "founders"
    run_plink("--bfile", str(bfile), "--filter-founders", "--make-bed", "--out", str(ref))
    cfg = qc_config(geno=0.05, hwe=1e-3, maf=0.01)
    arrays = site_counts(ref, cfg).to_arrays()
    assert arrays["groups"][FOUNDERS] == ALL and arrays["counts"].shape[0] == 3
    pooled = federated_variant_qc([SiteCounts.from_arrays(arrays)], cfg)
    local = run_qc(ref, cfg)
    np.testing.assert_array_equal(pooled.status, local.variant_status)


def test_counts_sensitivity_bounds_what_one_subject_changes(tmp_path: Path) -> None:
    """Against the definition: the released values with and without one subject differ by
    at most ``counts_sensitivity`` in L2, and a subject in every group comes close to it."""
    from preprocessing.federated_qc import counts_sensitivity

    source = random_fileset(tmp_path / "s", seed=6)
    bfile = tmp_path / "sorted"  # plink --make-bed sorts the variants: compare like with like
    assert run_plink("--bfile", str(source), "--make-bed", "--out", str(bfile)).returncode == 0
    cfg = qc_config(mind=0.1, geno=0.05, hwe=1e-3, maf=0.01)
    full = site_counts(bfile, cfg)
    bound = counts_sensitivity(full)
    fam = read_plink(bfile).fam
    in_all = np.flatnonzero(fam.male & fam.founder & fam.control)
    others = np.flatnonzero(~(fam.male & fam.founder & fam.control))
    assert in_all.size and others.size

    def released(c: SiteCounts) -> np.ndarray:
        g = np.flatnonzero(full.present)
        return np.concatenate(
            [c.counts[g, :3].ravel(), c.sizes[g], [c.n_samples, c.n_removed_mind, c.n_controls]]
        )

    norms = []
    for i in [*in_all[:3], *others[:2]]:
        out = plink_samples(bfile, "--remove", np.array([i]), tmp_path / f"without-{i}")
        diff = released(full) - released(site_counts(out, cfg))
        norms.append(float(np.linalg.norm(diff)))
    assert max(norms) <= bound
    assert max(norms[:3]) >= 0.9 * bound  # the bound is tight for a subject in every group
