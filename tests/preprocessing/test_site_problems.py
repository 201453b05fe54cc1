"""g2i-prepare on the kinds of files a hospital really has: no bad input loses, corrupts or
silently drops a site's data (each case: files written, prepared, read back)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conf import load_config, to_object
from conf.schema import DataConfig
from preprocessing.dataset import LOCK_NAME, load_site_dataset, prepare_site
from preprocessing.errors import CacheLockedError, EmptySplitError, NoUsableSubjectsError
from preprocessing.panel import default_catalog_path, load_catalog
from preprocessing.prepare_cli import main as prepare_main

N = 10  # subjects kept in the small site


def _cfg(**changes: object) -> DataConfig:
    base: DataConfig = to_object(load_config("tiny").data)
    return replace(base, **{"image_size": 16, "val_fraction": 0.2, "test_fraction": 0.2, **changes})


def _stand_in(site: Path) -> tuple[pd.DataFrame, dict]:
    """Genotypes that encode the subject: row of subject k (in .fam order) is [k % 3, k]."""
    iids = [ln.split()[1] for ln in (site / "genotypes.fam").read_text().splitlines()]
    rows = {sid: [k % 3, k] for k, sid in enumerate(iids)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["rs1", "code"]), {}


@pytest.fixture()
def site(cohort_dir: Path, tmp_path: Path) -> Path:
    """site-0 cut to its first N clinical rows and their scans (the .fam keeps all)."""
    dst = tmp_path / "site"
    shutil.copytree(cohort_dir / "site-0", dst)
    clinical = pd.read_csv(dst / "clinical.csv", dtype=str)
    clinical.iloc[:N].to_csv(dst / "clinical.csv", index=False)
    for p in (dst / "mri").iterdir():
        if p.name.removesuffix(".nii.gz") not in set(clinical.PTID[:N]):
            p.unlink()
    return dst


def _prepare(site: Path, out: Path, **kw: object) -> dict:
    cfg = kw.pop("cfg", _cfg())
    return prepare_site(site, out, cfg, _stand_in, progress=False, **kw)


def _ids(site: Path) -> list[str]:
    return list(pd.read_csv(site / "clinical.csv", dtype=str).PTID)


def _check_rows(m: dict, out: Path, site: Path) -> None:
    """Every cached subject carries its own genotype row (no shift)."""
    table, _ = _stand_in(site)
    geno = np.load(out / "genotypes.npy")
    assert len(geno) == len(m["subjects"]) == len({s["id"] for s in m["subjects"]})
    for s in m["subjects"]:
        np.testing.assert_array_equal(geno[s["row"]], table.loc[s["id"]].to_numpy())


def _cli(site: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple:
    code = prepare_main([f"site_dir={site}", f"output_dir={out}", "data.image_size=16", *extra])
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip()


# ---- identity: duplicated IDs, whitespace, leading zeros, wrong column ------------------


def test_iid_under_two_fids_stops_the_site_naming_it(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fam = site / "genotypes.fam"
    lines = fam.read_text().splitlines()
    first = lines[0].split()
    second = lines[1].split()
    lines[1] = " ".join(["batch2", first[1], *second[2:]])  # S1 genotyped again in batch 2
    fam.write_text("\n".join(lines) + "\n")
    code, _, err = _cli(site, tmp_path / "prep", capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"IID {first[1]} under FIDs {first[0]}, batch2" in err and "--remove" in err
    assert not (tmp_path / "prep" / "manifest.json").exists()


def test_duplicate_ptid_rows(site: Path, tmp_path: Path) -> None:
    clinical = pd.read_csv(site / "clinical.csv", dtype=str)
    ids = list(clinical.PTID)
    other = {"CN": "AD", "MCI": "CN", "AD": "CN"}
    conflict = clinical.iloc[[0]].assign(DX=other[clinical.DX[0]])
    same = clinical.iloc[[1]]
    pd.concat([clinical, conflict, same]).to_csv(site / "clinical.csv", index=False)
    m = _prepare(site, tmp_path / "prep")
    reasons = {e["subject"]: e["reason"] for e in m["exclusions"]}
    assert reasons[ids[0]].startswith("conflicting diagnoses on lines 2 (")
    assert [s["id"] for s in m["subjects"]] == ids[1:]  # each once; the agreeing pair is one
    _check_rows(m, tmp_path / "prep", site)


def test_stray_spaces_in_ptid_keep_the_subject(site: Path, tmp_path: Path) -> None:
    text = (site / "clinical.csv").read_text().splitlines()
    ids = _ids(site)
    text[1] = text[1].replace(ids[0], f"  {ids[0]} ", 1)
    text[2] = text[2].replace(ids[1], f"{ids[1]}\t", 1)
    (site / "clinical.csv").write_text("\n".join(text) + "\n")
    m = _prepare(site, tmp_path / "prep")
    assert {ids[0], ids[1]} <= {s["id"] for s in m["subjects"]}
    assert len(m["subjects"]) == N
    _check_rows(m, tmp_path / "prep", site)


def test_leading_zeros_lost_are_an_error_not_zero_subjects(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinical = pd.read_csv(site / "clinical.csv", dtype=str)
    ids = list(clinical.PTID)
    clinical["PTID"] = [s.replace("_S_000", "_S_").lstrip("0") for s in ids]  # 001_S_0001 -> 1_S_1
    clinical.to_csv(site / "clinical.csv", index=False)
    code, _, err = _cli(site, tmp_path / "prep", capsys)
    assert code == 2 and "leading zeros" in err and repr(ids[0]) in err
    assert "clinical.csv" in err


def test_ids_in_the_wrong_column_are_an_error(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinical = pd.read_csv(site / "clinical.csv", dtype=str)
    clinical.insert(1, "Subject", clinical.PTID)
    clinical["PTID"] = [str(1000 + k) for k in range(len(clinical))]  # e.g. the RID
    clinical.to_csv(site / "clinical.csv", index=False)
    code, _, err = _cli(site, tmp_path / "prep", capsys)
    assert code == 2 and "column 'Subject'" in err and "PTID" in err


# ---- nothing usable: non-zero exit, true reasons -----------------------------------------


def test_no_usable_subject_is_exit_2_with_true_reasons(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinical = pd.read_csv(site / "clinical.csv", dtype=str)
    clinical["PTID"] = [f"X{k}" for k in range(len(clinical))]  # matches nothing anywhere
    clinical.to_csv(site / "clinical.csv", index=False)
    with pytest.raises(NoUsableSubjectsError) as err:
        _prepare(site, tmp_path / "prep")
    assert err.value.reasons["not in genotypes.fam"] == N
    assert err.value.reasons["no MRI scan"] == N
    assert "no genotypes after QC" not in str(err.value)  # QC removed nobody
    written = json.loads((tmp_path / "prep" / "exclusions.json").read_text())
    assert {e["subject"] for e in written} >= set(clinical.PTID)
    code, _, msg = _cli(site, tmp_path / "prep2", capsys)
    assert code == 2 and f"{N} not in genotypes.fam" in msg.splitlines()[-1]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"PTID,DX,APGEN1,APGEN2\n", "only a header")],
)
def test_empty_or_header_only_table_is_exit_2(
    content: bytes, message: str, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site / "clinical.csv").write_bytes(content)
    code, _, err = _cli(site, tmp_path / "prep", capsys)
    assert code == 2 and message in err and str(site / "clinical.csv") in err


def test_latin1_and_bom_tables_prepare_every_subject(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinical = pd.read_csv(site / "clinical.csv", dtype=str)
    clinical["SITE"] = "Hôpital Créteil"
    for encoding in ("latin-1", "utf-8-sig"):
        clinical.to_csv(site / "clinical.csv", index=False, encoding=encoding)
        out = tmp_path / encoding
        code, _, err = _cli(site, out, capsys)
        assert code == 0, err
        m = json.loads((out / "manifest.json").read_text())
        assert len(m["subjects"]) == N - len(m["exclusions"]) + sum(
            e["reason"] == "genotyped but not in clinical.csv" for e in m["exclusions"]
        )
        assert m["clinical"]["encoding"] == encoding.removesuffix("-sig")


# ---- one file must not take the site down ------------------------------------------------


def test_broken_link_and_flat_scan_exclude_only_those_subjects(site: Path, tmp_path: Path) -> None:
    ids = _ids(site)
    (site / "mri" / f"{ids[0]}.nii.gz").unlink()
    (site / "mri" / f"{ids[0]}.nii.gz").symlink_to(tmp_path / "moved-away.nii.gz")
    flat = site / "mri" / f"{ids[1]}.nii.gz"
    img = nib.load(flat)
    x = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.where(x > x.mean(), 1000, 0).astype(np.int16)  # a constant-foreground volume
    nib.save(nib.Nifti1Image(mask, img.affine, img.header), flat)
    m = _prepare(site, tmp_path / "prep", cfg=_cfg(mni_min_correlation=-1.0))
    reasons = {e["subject"]: e["reason"] for e in m["exclusions"]}
    assert reasons[ids[0]].startswith("broken scan link:") and "moved-away" in reasons[ids[0]]
    assert reasons[ids[1]].startswith("bad scan:") and flat.name in reasons[ids[1]]
    assert "cannot normalise" in reasons[ids[1]]
    assert [s["id"] for s in m["subjects"]] == ids[2:]
    assert np.load(tmp_path / "prep" / "images.npy").shape[0] == N - 2
    _check_rows(m, tmp_path / "prep", site)


# ---- the cache: content, config (catalog), lock, temp names ------------------------------


def test_same_size_same_mtime_replacement_is_rebuilt(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    m1 = _prepare(site, out)
    clinical = site / "clinical.csv"
    text = clinical.read_text()
    st = clinical.stat()
    lines = text.splitlines()
    cn = next(i for i, ln in enumerate(lines) if ",CN," in ln)
    lines[cn] = lines[cn].replace(",CN,", ",AD,")  # same size
    clinical.write_text("\n".join(lines) + "\n")  # as `cp -p` of an edited copy leaves it
    os.utime(clinical, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert clinical.stat().st_size == st.st_size
    m2 = _prepare(site, out)
    assert m2["inputs_hash"] != m1["inputs_hash"]
    dx1 = {s["id"]: s["dx"] for s in m1["subjects"]}
    dx2 = {s["id"]: s["dx"] for s in load_site_dataset(out, None).subjects}
    assert {k for k in dx1 if dx1[k] != dx2[k]} == {lines[cn].split(",")[0]}


def test_catalog_is_part_of_the_cache_key(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "prep"
    assert _cli(site, out, capsys)[0] == 0
    full = json.loads((out / "manifest.json").read_text())["snp_names"]
    lines = default_catalog_tsv().splitlines()
    by_id = {ln.split("\t")[0]: ln for ln in lines[1:]}
    catalog = tmp_path / "five.tsv"
    catalog.write_text("\n".join([lines[0], *(by_id[r] for r in full[:5])]) + "\n")
    assert _cli(site, out, capsys, f"catalog={catalog}")[0] == 0
    names = json.loads((out / "manifest.json").read_text())["snp_names"]
    assert len(full) > 40 and names == [*full[:5], "APOE_e4"]
    catalog.write_text("\n".join([lines[0], *(by_id[r] for r in full[:3])]) + "\n")  # edited
    assert _cli(site, out, capsys, f"catalog={catalog}")[0] == 0
    names = json.loads((out / "manifest.json").read_text())["snp_names"]
    assert names == [*full[:3], "APOE_e4"]


def default_catalog_tsv() -> str:
    cols = ["rsid", "gene", "chrom", "pos_grch37", "risk_allele"]
    rows = ["\t".join(cols)]
    for s in load_catalog(default_catalog_path()):
        rows.append("\t".join([s.rsid, s.gene, s.chrom, str(s.pos or "NA"), s.risk_allele]))
    return "\n".join(rows) + "\n"


def test_a_second_run_waits_for_the_first_or_refuses(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    out.mkdir()
    with open(out / LOCK_NAME, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a first g2i-prepare holds it
        held.write("4242")
        held.flush()
        with pytest.raises(CacheLockedError, match="pid 4242"):
            _prepare(site, out, lock_timeout_s=0.3)
        result: dict = {}
        waiter = threading.Thread(target=lambda: result.update(_prepare(site, out)))
        waiter.start()
        time.sleep(0.6)
        assert waiter.is_alive() and not (out / "manifest.json").exists()  # it waits
        fcntl.flock(held, fcntl.LOCK_UN)
    waiter.join(60)
    assert len(result["subjects"]) == N
    assert sorted(p.name for p in out.iterdir() if "partial" in p.name) == []


def test_empty_validation_split_is_said(site: Path, tmp_path: Path) -> None:
    m = _prepare(site, tmp_path / "prep", cfg=_cfg(val_fraction=0.0))
    assert m["split_sizes"]["val"] == 0
    assert any("val split is empty" in w for w in m["warnings"])
    assert len(load_site_dataset(tmp_path / "prep", "val")) == 0
    with pytest.raises(EmptySplitError, match="data.val_fraction"):
        load_site_dataset(tmp_path / "prep", "val", require_nonempty=True)
    assert len(load_site_dataset(tmp_path / "prep", "train", require_nonempty=True)) > 0


def test_bad_arguments_are_one_line_messages(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("x")
    cases = [
        ([f"site_dir={tmp_path / 'nope'}", f"output_dir={tmp_path / 'o'}"], "is not a folder"),
        ([f"site_dir={site}", f"output_dir={tmp_path / 'a-file'}"], "is a file"),
        ([f"site_dir={site}", f"output_dir={tmp_path / 'o'}", "data.nosuch=1"], "data.nosuch"),
    ]
    for args, message in cases:
        assert prepare_main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
