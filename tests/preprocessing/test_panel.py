"""AD panel: rsID matching, risk-allele alignment, missing codes, APOE e4 sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from preprocessing.bed_kernels import A1_COUNT_OF_CODE, decode_rows
from preprocessing.errors import G2IError, GenotypeFormatError
from preprocessing.panel import (
    APOE_COLUMN,
    MISSING,
    align,
    build_panel,
    default_catalog_path,
    load_catalog,
)
from preprocessing.plink import read_plink
from preprocessing.plink_io import Sample, Variant, write_plink

CATALOG = """# test catalog
rsid\tgene\tchrom\tpos_grch37\trisk_allele\tsource
rsA1\tG1\t1\t100\tA\tT
rsA2\tG2\t1\tNA\tG\tT
rsFLIP\tG3\t2\t300\tA\tT
rsAT\tG4\t2\t400\tA\tT
rsBAD\tG5\t3\t500\tA\tT
rs429358\tAPOE\t19\t45411941\tC\tT
rsABSENT\tG6\t4\t600\tC\tT
"""

# A1 counts per sample (5 samples), -1 missing
GENOTYPES = {
    "rsA1": ("A", "G", [2, 1, 0, -1, 1]),  # risk A is A1: copies = A1 count
    "rsA2": ("A", "G", [2, 1, 0, 0, -1]),  # risk G is A2: copies = 2 - A1 count
    "rsFLIP": ("T", "C", [0, 1, 2, 1, 1]),  # risk A on the other strand = T (A1)
    "rsAT": ("A", "T", [1, 1, 1, 1, 1]),  # ambiguous: dropped
    "rsBAD": ("C", "G", [0, 0, 0, 0, 0]),  # C/G: ambiguous too
    "rs429358": ("T", "C", [2, 1, 0, -1, 2]),  # e4 = C = A2 copies
}


def make_fileset(tmp: Path, with_apoe: bool = True) -> tuple[Path, Path]:
    snps = {k: v for k, v in GENOTYPES.items() if with_apoe or k != "rs429358"}
    variants = [
        Variant("1", k, 0, 10 + j, a1, a2) for j, (k, (a1, a2, _)) in enumerate(snps.items())
    ]
    g = np.array([v[2] for v in snps.values()], dtype=np.int8)
    samples = [Sample(f"S{i}", f"S{i}", sex=1, phenotype=1) for i in range(5)]
    write_plink(tmp / "geno", g, variants, samples)
    cat = tmp / "catalog.tsv"
    cat.write_text(CATALOG)
    return tmp / "geno", cat


def test_alignment_and_encoding(tmp_path: Path) -> None:
    bfile, cat = make_fileset(tmp_path)
    table, rep = build_panel(bfile, cat)
    assert list(table.index) == [f"S{i}" for i in range(5)]
    assert list(table["rsA1"]) == [2, 1, 0, MISSING, 1]
    assert list(table["rsA2"]) == [0, 1, 2, 2, MISSING]
    assert list(table["rsFLIP"]) == [0, 1, 2, 1, 1]
    assert list(table[APOE_COLUMN]) == [0, 1, 2, MISSING, 0]
    assert rep.found == ["rsA1", "rsA2", "rsFLIP", "rs429358"]
    assert rep.flipped == ["rsFLIP"] and rep.swapped == ["rsA2", "rs429358"]
    assert set(rep.dropped) == {"rsAT", "rsBAD"} and "ambiguous" in rep.dropped["rsAT"]
    assert rep.missing == ["rsABSENT"]
    assert rep.apoe_source == {"rs429358": 4, "missing": 1}
    assert table.dtypes.unique().tolist() == [np.dtype("int8")]


def test_align_cases() -> None:
    assert align("A", "G", "A") == ("ok", True, False)
    assert align("A", "G", "g") == ("ok", False, False)
    assert align("T", "C", "A") == ("ok", True, True)
    assert align("G", "C", "G")[0] == "ambiguous"
    assert align("A", "0", "G")[0] == "mismatch"  # e.g. a monomorphic SNP's missing allele


def test_apoe_from_clinical_or_error(tmp_path: Path) -> None:
    bfile, cat = make_fileset(tmp_path, with_apoe=False)
    with pytest.raises(GenotypeFormatError, match="rs429358 is not genotyped"):
        build_panel(bfile, cat)
    clinical = tmp_path / "clinical.csv"
    pd.DataFrame(
        {
            "PTID": ["S0", "S1", "S2", "S4"],
            "DX": "CN",
            "APGEN1": [3, 4, 4, 2],
            "APGEN2": [3, 3, 4, 4],
        }
    ).to_csv(clinical, index=False)
    table, rep = build_panel(bfile, cat, clinical)
    assert list(table[APOE_COLUMN]) == [0, 1, 2, MISSING, 1]
    assert rep.apoe_source["APGEN1/APGEN2"] == 4 and "rs429358" in rep.missing
    # a subject uncalled at rs429358 takes the clinical value
    (tmp_path / "with-apoe").mkdir()
    bfile2, _ = make_fileset(tmp_path / "with-apoe")
    table2, _ = build_panel(bfile2, cat, clinical)
    assert list(table2[APOE_COLUMN]) == [0, 1, 2, MISSING, 0]
    bad = tmp_path / "bad.csv"
    bad.write_text("PTID,APGEN1\nS0,3\n")
    with pytest.raises(GenotypeFormatError, match="APGEN2"):
        build_panel(bfile, cat, bad)


def test_catalog_validation(tmp_path: Path) -> None:
    assert len(load_catalog()) >= 49 and default_catalog_path().exists()
    assert any(s.pos is None for s in load_catalog())
    bad = tmp_path / "c.tsv"
    bad.write_text("rsid\tgene\tchrom\tpos_grch37\nrs1\tX\t1\t5\n")
    with pytest.raises(GenotypeFormatError, match="risk_allele") as err:
        load_catalog(bad)
    assert str(bad) in str(err.value)
    bad.write_text("rsid\tgene\tchrom\tpos_grch37\trisk_allele\nrs1\tX\t1\t5\tZ\n")
    with pytest.raises(GenotypeFormatError, match="line 2"):
        load_catalog(bad)


def test_cohort_sites_flip_swap_and_no_apoe(tmp_path: Path) -> None:
    from simulations.cohort import simulate_cohort
    from tests.conftest import small_cohort_config

    cfg = small_cohort_config(
        n_sites=3,
        subjects_per_site=[12],
        n_background_snps=60,
        write_mri=False,
        strand_flip_sites=[1],
        allele_swap_sites=[2],
        no_apoe_sites=[2],
    )
    simulate_cohort(cfg, tmp_path, seed=5)
    arrays = json.loads((tmp_path / "truth" / "site_arrays.json").read_text())
    truth = pd.read_csv(tmp_path / "truth" / "subjects.csv").set_index("PTID")
    tables = {}
    for k in range(3):
        site = tmp_path / f"site-{k}"
        table, rep = build_panel(site / "genotypes", clinical_csv=site / "clinical.csv")
        # APOE e4 equals the truth, from rs429358 (sites 0, 1) or APGEN (site 2)
        assert (table[APOE_COLUMN].to_numpy() == truth.loc[table.index, "APOE_e4"].to_numpy()).all()
        expected_flips = [s for s in arrays[f"site-{k}"]["strand_flipped"] if s not in rep.dropped]
        assert sorted(rep.flipped) == sorted(expected_flips)
        assert not rep.missing or k == 2 and set(rep.missing) >= {"rs429358", "rs7412"}
        assert all(reason.startswith("ambiguous") for reason in rep.dropped.values())
        tables[k] = table
    # undoing the site's rendering (strand flips, swapped allele order) changes nothing
    for k, change in ((1, "strand_flipped"), (2, "allele_swapped")):
        original = rewrite_array(
            tmp_path / f"site-{k}" / "genotypes",
            arrays[f"site-{k}"][change],
            change,
            tmp_path / f"undo-{k}",
        )
        table, _ = build_panel(original, clinical_csv=tmp_path / f"site-{k}" / "clinical.csv")
        pd.testing.assert_frame_equal(table, tables[k])


def rewrite_array(bfile: Path, snp_ids: list[str], change: str, out: Path) -> Path:
    """Rewrite a fileset with the given SNPs strand-complemented or allele-swapped back."""
    fs = read_plink(bfile)
    g = A1_COUNT_OF_CODE[decode_rows(np.asarray(fs.bed), fs.n_samples)]
    comp = str.maketrans("ACGT", "TGCA")
    variants = []
    for j, (c, snp, pos, a1, a2) in enumerate(
        zip(
            fs.bim.strings(0),
            fs.bim.strings(1),
            fs.bim.pos,
            fs.bim.strings(4),
            fs.bim.strings(5),
            strict=True,
        )
    ):
        if snp in snp_ids and change == "strand_flipped":
            a1, a2 = a1.translate(comp), a2.translate(comp)
        elif snp in snp_ids:
            a1, a2 = a2, a1
            g[j] = np.where(g[j] >= 0, 2 - g[j], -1)
        variants.append(Variant(c, snp, 0, int(pos), a1, a2))
    fam = fs.fam
    samples = [Sample(f, i, sex=int(x)) for f, i, x in zip(fam.fid, fam.iid, fam.sex, strict=True)]
    write_plink(out, g, variants, samples)
    return out


def test_apoe_from_a_bom_table_with_spaces_and_duplicates(tmp_path: Path) -> None:
    bfile, cat = make_fileset(tmp_path, with_apoe=False)
    clinical = tmp_path / "clinical.csv"
    text = "PTID,DX,APGEN1,APGEN2\n S0 ,CN,3,3\nS1,CN,4,3\nS2,AD,4,4\nS2,AD,3,3\n"
    text += "S4,CN,2,4\nS4,CN,2,4\n"
    clinical.write_bytes(b"\xef\xbb\xbf" + text.encode())
    table, _ = build_panel(bfile, cat, clinical)
    # S0 despite the spaces; S2's two rows disagree: missing, not one of them; S4 agrees
    assert list(table[APOE_COLUMN]) == [0, 1, MISSING, MISSING, 1]


def test_short_apgen_row_is_a_message_naming_the_line(tmp_path: Path) -> None:
    bfile, cat = make_fileset(tmp_path, with_apoe=False)
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("PTID,DX,APGEN1,APGEN2\nS0,CN,3,3\nS1,CN,4\n")
    with pytest.raises(G2IError, match="line 3: 3 fields where the header has 4") as err:
        build_panel(bfile, cat, clinical)
    assert str(clinical) in str(err.value)


def test_iid_under_two_fids_is_refused(tmp_path: Path) -> None:
    variants = [Variant("19", "rs429358", 0, 1, "T", "C")]
    samples = [Sample("B1", "S0"), Sample("B1", "S1"), Sample("B2", "S0")]
    write_plink(tmp_path / "geno", np.array([[0, 1, 2]], np.int8), variants, samples)
    with pytest.raises(GenotypeFormatError, match="IID S0 under FIDs B1, B2"):
        build_panel(tmp_path / "geno")
