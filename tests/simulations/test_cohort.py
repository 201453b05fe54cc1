"""The synthetic cohort against PLINK 1.9, nibabel, pandas-plink and its own truth folder."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from simulations.cohort import simulate_cohort

from ..conftest import PLINK, requires_plink, small_cohort_config


def _plink(*args: str, cwd: Path) -> str:
    res = subprocess.run([PLINK, *args], cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _site_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("site-*"))


def test_layout_and_clinical_columns(cohort_dir: Path) -> None:
    manifest = json.loads((cohort_dir / "cohort.json").read_text())
    assert manifest["sites"] == ["site-0", "site-1", "site-2"]
    for sdir, n in zip(_site_dirs(cohort_dir), [48, 40, 52], strict=True):
        clin = pd.read_csv(sdir / "clinical.csv")
        assert list(clin.columns) == ["PTID", "DX", "AGE", "PTGENDER", "APGEN1", "APGEN2"]
        assert len(clin) == n and clin.PTID.is_unique
        assert set(clin.DX) <= {"CN", "MCI", "AD"}
        assert set(clin.APGEN1) | set(clin.APGEN2) <= {2, 3, 4}
        assert sorted(p.name for p in (sdir / "mri").iterdir()) == sorted(
            f"{p}.nii.gz" for p in clin.PTID
        )
        fam = pd.read_csv(sdir / "genotypes.fam", sep=" ", header=None)
        assert list(fam[1]) == list(clin.PTID)
        assert list(fam[4]) == [1 if s == "Male" else 2 for s in clin.PTGENDER]
        pheno = {"CN": 1, "MCI": -9, "AD": 2}
        assert list(fam[5]) == [pheno[d] for d in clin.DX]


def test_truth_is_outside_every_site(cohort_dir: Path) -> None:
    for sdir in _site_dirs(cohort_dir):
        names = {p.name for p in sdir.rglob("*")}
        assert not names & {"truth", "subjects.csv", "effects.json", "qc_expected.json"}
    assert (cohort_dir / "truth" / "subjects.csv").exists()


def test_array_holds_the_whole_catalog_with_apoe(cohort_dir: Path) -> None:
    from preprocessing.panel import load_catalog

    catalog = pd.DataFrame(
        [(c.rsid, int(c.chrom), c.pos or np.nan, c.risk_allele) for c in load_catalog()],
        columns=["rsid", "chrom", "pos_grch37", "risk_allele"],
    )
    bim = pd.read_csv(cohort_dir / "site-0" / "genotypes.bim", sep="\t", header=None)
    by_id = bim.set_index(1)
    for r in catalog.itertuples():
        assert r.rsid in by_id.index
        row = by_id.loc[r.rsid]
        assert int(row[0]) == r.chrom
        if not np.isnan(r.pos_grch37):
            assert int(row[3]) == int(r.pos_grch37)
        assert r.risk_allele in (row[4], row[5])
    assert tuple(by_id.loc["rs429358", [4, 5]]) == ("C", "T")  # e4 allele C is the minor one
    assert (bim[1].str.contains(":")).sum() == 600  # background SNPs


def test_pandas_plink_reads_back_what_plink_reads(cohort_dir: Path, tmp_path: Path) -> None:
    from pandas_plink import read_plink1_bin

    prefix = cohort_dir / "site-1" / "genotypes"
    g = read_plink1_bin(f"{prefix}.bed", f"{prefix}.bim", f"{prefix}.fam", ref="a0", verbose=False)
    ours = g.values  # (sample, variant), copies of A1, NaN missing
    if PLINK is None:
        pytest.skip("plink1.9 is not installed")
    _plink(
        "--bfile",
        str(prefix),
        "--keep-allele-order",
        "--recode",
        "A",
        "--out",
        str(tmp_path / "raw"),
        cwd=tmp_path,
    )
    raw = pd.read_csv(tmp_path / "raw.raw", sep=r"\s+")
    ref = raw.iloc[:, 6:].to_numpy(dtype=float)  # counts of A1
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(np.nan_to_num(ours, nan=-1), np.nan_to_num(ref, nan=-1))


def test_write_plink_round_trip(tmp_path: Path) -> None:
    from pandas_plink import read_plink1_bin

    from preprocessing.plink_io import Sample, Variant, write_plink

    rng = np.random.default_rng(0)
    g = rng.integers(-1, 3, size=(9, 7)).astype(np.int8)  # 7 samples: a padded last byte
    variants = [Variant("1", f"v{j}", 0.0, 100 + j, "A", "G") for j in range(9)]
    samples = [Sample(f"f{i}", f"s{i}", sex=1 + i % 2) for i in range(7)]
    write_plink(tmp_path / "x", g, variants, samples)
    assert (tmp_path / "x.bed").stat().st_size == 3 + 9 * 2
    back = read_plink1_bin(str(tmp_path / "x.bed"), ref="a0", verbose=False).values.T
    np.testing.assert_array_equal(np.nan_to_num(back, nan=-1).astype(int), g)


@requires_plink
def test_plink_accepts_freq_missing_hardy(cohort_dir: Path, tmp_path: Path) -> None:
    for sdir in _site_dirs(cohort_dir):
        out = tmp_path / sdir.name
        _plink(
            "--bfile",
            str(sdir / "genotypes"),
            "--freq",
            "--missing",
            "--hardy",
            "--out",
            str(out),
            cwd=tmp_path,
        )
        for ext in (".frq", ".imiss", ".lmiss", ".hwe"):
            assert (out.parent / (out.name + ext)).stat().st_size > 0


def _plink_qc_removed(prefix: Path, out: Path) -> dict[str, object]:
    log = _plink(
        "--bfile",
        str(prefix),
        "--mind",
        "0.05",
        "--geno",
        "0.05",
        "--hwe",
        "1e-5",
        "--maf",
        "0.01",
        "--make-bed",
        "--out",
        str(out),
        cwd=out.parent,
    )
    patterns = {
        "mind": r"(\d+) (?:people|person) removed due to missing genotype data \(--mind\)",
        "geno": r"(\d+) variants? removed due to missing genotype data \(--geno\)",
        "hwe": r"--hwe: (\d+) variants? removed due to Hardy-Weinberg exact test",
        "maf": r"(\d+) variants? removed due to minor allele threshold",
    }
    counts = {k: int(re.search(p, log).group(1)) for k, p in patterns.items()}
    kept = set(pd.read_csv(f"{out}.bim", sep="\t", header=None)[1])
    return {"counts": counts, "kept": kept}


@requires_plink
def test_planted_failures_removed_at_truth_counts(cohort_dir: Path, tmp_path: Path) -> None:
    expected = json.loads((cohort_dir / "truth" / "qc_expected.json").read_text())
    planted = json.loads((cohort_dir / "truth" / "qc_planted.json").read_text())
    for sdir in _site_dirs(cohort_dir):
        got = _plink_qc_removed(sdir / "genotypes", tmp_path / sdir.name)
        exp = expected[sdir.name]
        assert got["counts"] == exp["counts"], sdir.name
        for cat in ("high_missing", "rare", "monomorphic", "hwe"):
            flt = planted["filter_of_category"][cat]
            assert set(planted["snps"][cat]) & got["kept"] == set() or cat == "hwe"
            assert set(exp["removed_snps"][flt]) & got["kept"] == set()
        irem = tmp_path / f"{sdir.name}.irem"
        removed = set(pd.read_csv(irem, sep=r"\s+", header=None)[1]) if irem.exists() else set()
        assert removed == set(planted["samples"][sdir.name]) == set(exp["removed_samples"])
        assert len(removed) >= 1
    # The site with most controls detects every planted HWE failure.
    assert max(expected[s]["counts"]["hwe"] for s in ("site-0", "site-1", "site-2")) == len(
        planted["snps"]["hwe"]
    )


@requires_plink
def test_pooled_cohort_matches_truth(cohort_dir: Path, tmp_path: Path) -> None:
    sites = _site_dirs(cohort_dir)
    merge = tmp_path / "merge.txt"
    merge.write_text("\n".join(str(s / "genotypes") for s in sites[1:]) + "\n")
    _plink(
        "--bfile",
        str(sites[0] / "genotypes"),
        "--merge-list",
        str(merge),
        "--make-bed",
        "--out",
        str(tmp_path / "pooled"),
        cwd=tmp_path,
    )
    got = _plink_qc_removed(tmp_path / "pooled", tmp_path / "pooled_qc")
    expected = json.loads((cohort_dir / "truth" / "qc_expected.json").read_text())["pooled"]
    planted = json.loads((cohort_dir / "truth" / "qc_planted.json").read_text())
    assert got["counts"] == expected["counts"]
    assert expected["counts"]["hwe"] == len(planted["snps"]["hwe"]) > 0
    assert not set().union(*planted["snps"].values()) & got["kept"]


def test_nifti_orientation_affine_and_grid(cohort_dir: Path) -> None:
    manifest = json.loads((cohort_dir / "cohort.json").read_text())
    grid = np.asarray(manifest["voxel_grid"]["affine_ras"])
    for sdir, code in zip(_site_dirs(cohort_dir), ["RAS", "LAS", "LPS"], strict=True):
        path = next((sdir / "mri").iterdir())
        img = nib.load(path)
        assert "".join(nib.aff2axcodes(img.affine)) == code
        assert img.header.get_data_dtype() == np.int16
        assert img.header.get_zooms() == (4.0, 4.0, 4.0)
        assert int(img.header["sform_code"]) == 4
        canon = nib.as_closest_canonical(img)
        np.testing.assert_allclose(canon.affine, grid, atol=1e-6)
        assert canon.shape == tuple(manifest["voxel_grid"]["shape"])


def test_same_anatomy_whatever_the_stored_orientation(tmp_path: Path) -> None:
    from simulations.anatomy import load_template_fields, output_grid
    from simulations.cohort import save_nifti

    fields = load_template_fields()
    shape, affine = output_grid(6.0, fields)
    vol = np.random.default_rng(0).uniform(0, 1000, shape).astype(np.float32)
    for code in ("RAS", "LAS", "LPS", "LPI"):
        save_nifti(vol, affine, code, tmp_path / f"{code}.nii.gz")
        canon = nib.as_closest_canonical(nib.load(tmp_path / f"{code}.nii.gz"))
        np.testing.assert_array_equal(canon.get_fdata(), np.rint(vol))
        np.testing.assert_allclose(canon.affine, affine)


def test_ventricle_truth_matches_image_csf(cohort_dir: Path) -> None:
    truth = pd.read_csv(cohort_dir / "truth" / "subjects.csv")
    measured = []
    for r in truth.itertuples():
        img = nib.as_closest_canonical(nib.load(cohort_dir / r.site / "mri" / f"{r.PTID}.nii.gz"))
        x = img.get_fdata()
        ijk = np.indices(x.shape).reshape(3, -1)
        mm = (img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]).reshape(3, *x.shape)
        box = (abs(mm[0]) < 22) & (mm[1] > -40) & (mm[1] < 20) & (mm[2] > 0) & (mm[2] < 32)
        wm = np.percentile(x[box], 90)
        measured.append(int((x[box] < 0.55 * wm).sum()))
    rho = stats.spearmanr(truth.true_ventricle_volume_mm3, measured).statistic
    assert rho > 0.8, rho
    # Diagnosis drives the anatomy: AD ventricles larger than CN on average.
    means = truth.groupby("DX").true_ventricle_volume_mm3.mean()
    assert means["AD"] > means["MCI"] > means["CN"]


def test_ad_rate_rises_with_apoe_e4() -> None:
    from simulations.genotypes import build_snp_table, population_moments, simulate_site_population

    cfg = small_cohort_config()
    rng = np.random.default_rng(5)
    snps = build_snp_table(cfg, rng)
    thr, prs = population_moments(cfg, snps, rng)
    pop = simulate_site_population(cfg, snps, 1, 4000, thr, prs, rng)
    ad = pop.dx == 2
    rates = [ad[pop.e4 == k].mean() for k in (0, 1, 2)]
    assert rates[0] < rates[1] < rates[2]
    # Logistic regression slope of AD on e4 count is clearly positive.
    slope = stats.linregress(pop.e4, ad.astype(float)).slope
    assert slope > 0.08
    # The polygenic score raises risk too.
    assert pop.prs_z[ad].mean() > pop.prs_z[pop.dx == 0].mean() + 0.2
    props = np.bincount(pop.dx, minlength=3) / pop.dx.size
    np.testing.assert_allclose(props, [0.32, 0.48, 0.20], atol=0.06)


def test_apoe_snps_follow_apgen(cohort_dir: Path) -> None:
    from pandas_plink import read_plink1_bin

    prefix = cohort_dir / "site-2" / "genotypes"
    g = read_plink1_bin(f"{prefix}.bed", f"{prefix}.bim", f"{prefix}.fam", ref="a0", verbose=False)
    clin = pd.read_csv(cohort_dir / "site-2" / "clinical.csv")
    c_copies = g.sel(variant=g.snp == "rs429358").values[:, 0]  # A1 = C
    e4 = (clin.APGEN1 == 4).astype(int) + (clin.APGEN2 == 4).astype(int)
    called = ~np.isnan(c_copies)
    np.testing.assert_array_equal(c_copies[called], e4.to_numpy()[called])


def test_site_options_flip_swap_and_drop(tmp_path: Path) -> None:
    cfg = small_cohort_config(
        n_sites=3,
        subjects_per_site=[8],
        n_background_snps=100,
        write_mri=False,
        strand_flip_sites=[1],
        allele_swap_sites=[2],
        no_apoe_sites=[2],
    )
    simulate_cohort(cfg, tmp_path, seed=3)
    arrays = json.loads((tmp_path / "truth" / "site_arrays.json").read_text())
    bims = {
        k: pd.read_csv(tmp_path / k / "genotypes.bim", sep="\t", header=None).set_index(1)
        for k in ("site-0", "site-1", "site-2")
    }
    comp = str.maketrans("ACGT", "TGCA")
    assert arrays["site-1"]["strand_flipped"]
    for snp in arrays["site-1"]["strand_flipped"]:
        assert bims["site-1"].loc[snp, 4] == bims["site-0"].loc[snp, 4].translate(comp)
    for snp in arrays["site-2"]["allele_swapped"]:
        if snp in bims["site-2"].index:
            assert bims["site-2"].loc[snp, 4] == bims["site-0"].loc[snp, 5]
    assert "rs429358" not in bims["site-2"].index and "rs7412" not in bims["site-2"].index
    assert set(arrays["site-2"]["dropped"]) == {"rs429358", "rs7412"}
    clin = pd.read_csv(tmp_path / "site-2" / "clinical.csv")
    assert clin[["APGEN1", "APGEN2"]].notna().all().all()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    cfg = small_cohort_config(
        subjects_per_site=[3, 2], n_sites=2, voxel_size_mm=8.0, n_background_snps=80
    )
    a, b, c = (
        simulate_cohort(cfg, tmp_path / n, seed=s).parent for n, s in (("a", 4), ("b", 4), ("c", 5))
    )
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "site-0" / "genotypes.bed").read_bytes() != (
        c / "site-0" / "genotypes.bed"
    ).read_bytes()


def test_existing_cohort_is_kept_or_refused(tmp_path: Path) -> None:
    cfg = small_cohort_config(
        n_sites=1, subjects_per_site=[4], write_mri=False, n_background_snps=50
    )
    m = simulate_cohort(cfg, tmp_path, seed=1)
    stamp = m.stat().st_mtime_ns
    assert simulate_cohort(cfg, tmp_path, seed=1).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="overwrite"):
        simulate_cohort(cfg, tmp_path, seed=2)
    simulate_cohort(cfg, tmp_path, seed=2, overwrite=True)


def test_cli_help_and_cfg(capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.cli import main

    assert main(["--help"]) == 0
    assert "output_dir=PATH" in capsys.readouterr().out
    assert main(["--cfg", "cohort.n_sites=5"]) == 0
    assert "n_sites: 5" in capsys.readouterr().out
