"""The per-site dataset: join, exclusions, cache, splits, torch items."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conf import load_config, to_object
from conf.schema import DataConfig
from preprocessing.dataset import load_site_dataset, map_diagnoses, prepare_site

SNPS = ["rs1", "rs2", "APOE_e4"]


def _cfg(**changes: object) -> DataConfig:
    base: DataConfig = to_object(load_config("tiny").data)
    return replace(base, **{"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2, **changes})


def _table_from_clinical(site: Path) -> tuple[pd.DataFrame, dict]:
    # A stand-in genotype panel: deterministic codes per subject, one missing call.
    ids = pd.read_csv(site / "clinical.csv", dtype={"PTID": str}).PTID
    rows = {sid: [i % 3, (i + 1) % 3, -1 if i == 0 else 1] for i, sid in enumerate(ids)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=SNPS), {"source": "test"}


@pytest.fixture()
def site(cohort_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "site-0"
    shutil.copytree(cohort_dir / "site-0", dst)
    return dst


def test_prepare_joins_and_serves_items(site: Path, tmp_path: Path) -> None:
    m = prepare_site(site, tmp_path / "prep", _cfg(), _table_from_clinical, seed=1, progress=False)
    assert len(m["subjects"]) == 48 and m["exclusions"] == []
    assert m["snp_names"] == SNPS
    ds = load_site_dataset(tmp_path / "prep", "train")
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["genotypes"].dtype == torch.int64 and item["genotypes"].shape == (3,)
    clinical = pd.read_csv(site / "clinical.csv", dtype={"PTID": str}).set_index("PTID")
    for i in range(len(ds)):
        it = ds[i]
        assert ["CN", "MCI", "AD"][int(it["label"])] == clinical.loc[it["subject_id"], "DX"]
    first = clinical.index[0]
    row = next(s["row"] for s in m["subjects"] if s["id"] == first)
    np.testing.assert_array_equal(np.load(tmp_path / "prep" / "genotypes.npy")[row], [0, 1, 3])


def test_splits_are_disjoint_stratified_and_complete(site: Path, tmp_path: Path) -> None:
    m = prepare_site(site, tmp_path / "prep", _cfg(), _table_from_clinical, seed=1, progress=False)
    by_split = {
        s: {x["id"] for x in m["subjects"] if x["split"] == s} for s in ("train", "val", "test")
    }
    assert not by_split["train"] & by_split["val"] and not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    assert set().union(*by_split.values()) == {x["id"] for x in m["subjects"]}
    for lab in {x["label"] for x in m["subjects"]}:
        n = sum(x["label"] == lab for x in m["subjects"])
        n_test = sum(x["label"] == lab and x["split"] == "test" for x in m["subjects"])
        assert n_test == round(0.2 * n)
    sizes = [len(load_site_dataset(tmp_path / "prep", s)) for s in ("train", "val", "test")]
    assert sum(sizes) == len(load_site_dataset(tmp_path / "prep", None)) == 48


def test_exclusions_are_listed_and_the_run_goes_on(site: Path, tmp_path: Path) -> None:
    clinical = pd.read_csv(site / "clinical.csv", dtype={"PTID": str})
    ids = list(clinical.PTID)
    (site / "mri" / f"{ids[1]}.nii.gz").unlink()  # no scan
    (site / "mri" / f"{ids[2]}.nii.gz").write_bytes(b"\x1f\x8b garbage")  # corrupt scan
    clinical.loc[3, "DX"] = np.nan  # no diagnosis
    clinical.loc[4, "DX"] = "Unknown"  # unusable diagnosis
    clinical.to_csv(site / "clinical.csv", index=False)

    def table(s: Path) -> tuple[pd.DataFrame, dict]:
        t = _table_from_clinical(s)[0].drop(index=ids[5])  # failed genotype QC
        t.loc["999_S_9999"] = [0, 0, 0]  # genotyped, no clinical record
        return t, {}

    m = prepare_site(site, tmp_path / "prep", _cfg(), table, progress=False)
    reasons = {e["subject"]: e["reason"] for e in m["exclusions"]}
    assert reasons[ids[1]] == "no MRI scan"
    assert reasons[ids[2]].startswith("bad scan:") and ids[2] in reasons[ids[2]]
    assert reasons[ids[3]] == reasons[ids[4]] == "no usable diagnosis"
    assert reasons[ids[5]] == "no genotypes after QC"
    assert reasons["999_S_9999"] == "genotyped but not in clinical.csv"
    assert len(m["subjects"]) == 48 - 5
    assert np.load(tmp_path / "prep" / "images.npy").shape[0] == 43


def test_cache_reused_then_rebuilt_on_change(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    prepare_site(site, out, _cfg(), _table_from_clinical, progress=False)
    stamp = (out / "images.npy").stat().st_mtime_ns
    prepare_site(site, out, _cfg(), _table_from_clinical, progress=False)
    assert (out / "images.npy").stat().st_mtime_ns == stamp  # unchanged inputs: reused
    m = prepare_site(site, out, _cfg(image_size=24), _table_from_clinical, progress=False)
    assert m["image_shape"] == [1, 24, 24]  # config changed: rebuilt
    scan = next((site / "mri").iterdir())
    os.utime(scan, ns=(scan.stat().st_atime_ns, scan.stat().st_mtime_ns + 10**9))
    h = json.loads((out / "manifest.json").read_text())["inputs_hash"]
    m2 = prepare_site(site, out, _cfg(image_size=24), _table_from_clinical, progress=False)
    assert m2["inputs_hash"] == h  # only the time changed: the content decides, reused


def test_slab_of_slices(site: Path, tmp_path: Path) -> None:
    m = prepare_site(
        site, tmp_path / "prep", _cfg(n_slices=3), _table_from_clinical, progress=False
    )
    assert m["slice_z_mm"] == [16.0, 18.0, 20.0]
    assert load_site_dataset(tmp_path / "prep", "test")[0]["image"].shape == (3, 32, 32)


def test_adni_vocabularies() -> None:
    cfg = _cfg()
    dx = pd.DataFrame({"DX": ["CN", "MCI", "Dementia", None, "weird"]})
    np.testing.assert_array_equal(map_diagnoses(dx, cfg).to_numpy(), [0, 1, 2, np.nan, np.nan])
    bl = pd.DataFrame({"DX_bl": ["CN", "SMC", "EMCI", "LMCI", "AD"]})
    np.testing.assert_array_equal(map_diagnoses(bl, cfg).to_numpy(), [0, 0, 1, 1, 2])
    with pytest.raises(Exception, match="diagnosis column"):
        map_diagnoses(pd.DataFrame({"Group": ["CN"]}), cfg)


def test_missing_manifest_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="g2i-prepare"):
        load_site_dataset(tmp_path)


def test_real_genotype_step_and_cli(site: Path, cohort_dir: Path, tmp_path: Path) -> None:
    from preprocessing.prepare_cli import main

    out = tmp_path / "prep"
    assert main([f"site_dir={site}", f"output_dir={out}", "data.image_size=32"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    planted = json.loads((cohort_dir / "truth" / "qc_planted.json").read_text())
    bad = set(planted["samples"]["site-0"])
    reasons = {e["subject"]: e["reason"] for e in m["exclusions"]}
    assert bad and all(reasons[b] == "no genotypes after QC" for b in bad)
    assert m["snp_names"][-1] == "APOE_e4" and "rs429358" in m["snp_names"]
    assert m["genotype_report"]["panel"]["apoe_e4_source"]["rs429358"] == len(m["subjects"])
    clinical = pd.read_csv(site / "clinical.csv", dtype={"PTID": str}).set_index("PTID")
    geno = np.load(out / "genotypes.npy")
    for s in m["subjects"]:
        e4 = int(clinical.loc[s["id"], "APGEN1"] == 4) + int(clinical.loc[s["id"], "APGEN2"] == 4)
        assert geno[s["row"], -1] in (e4, 3)  # 3: the call was missing
    assert main([]) == 0  # help
    assert main([f"site_dir={site}"]) == 2  # output_dir missing
