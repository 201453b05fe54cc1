from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from client.site import site_data_path
from preprocessing.census import site_census


def test_site_path_from_node_config(tmp_path: Path) -> None:
    assert site_data_path({"data-path": str(tmp_path)}, "ignored") == tmp_path
    assert site_data_path({"partition-id": 2, "num-partitions": 3}, "/c") == Path("/c/site-2")
    with pytest.raises(KeyError, match="data-path"):
        site_data_path({}, "/c")


def _expected_census(site: Path) -> dict[str, int]:
    """The census computed independently from the site's files with pandas."""
    table = pd.read_csv(site / "clinical.csv", dtype=str)
    ids = set(table.PTID)
    fam = pd.read_csv(site / "genotypes.fam", sep=" ", header=None, dtype=str)
    scans = {p.name.removesuffix(".nii.gz") for p in (site / "mri").glob("*.nii.gz")}
    dx = table.set_index("PTID")["DX"]
    out = {f"n-{d}": int((dx == d).sum()) for d in ("CN", "MCI", "AD")}
    out.update(
        {
            "n-subjects": len(ids),
            "n-scans": len(ids & scans),
            "n-genotyped": len(ids & set(fam[1])),
            "n-complete": len(ids & scans & set(fam[1])),
        }
    )
    return out


def test_census_counts_only_aggregates(cohort_dir: Path) -> None:
    site = cohort_dir / "site-1"
    counts = site_census(site)
    assert counts == _expected_census(site)
    assert counts["n-subjects"] == 40 and counts["n-complete"] == 40
    assert counts["n-CN"] > 0 and counts["n-MCI"] > 0 and counts["n-AD"] > 0
    assert all(isinstance(v, int) for v in counts.values())


def test_census_reads_like_prepare(cohort_dir: Path, tmp_path: Path) -> None:
    """DX_bl-only tables, ADNI's 'Dementia', any case, one subject per PTID."""
    site = tmp_path / "site"
    shutil.copytree(cohort_dir / "site-1", site)
    expected = _expected_census(site)
    table = pd.read_csv(site / "clinical.csv", dtype=str)
    spelled = {"CN": "cn", "MCI": "LMCI", "AD": "Dementia"}
    table = table.assign(DX=table.DX.map(spelled)).rename(columns={"DX": "DX_bl"})
    first_ad = table.index[table.DX_bl == "Dementia"][0]
    table.loc[first_ad, "DX_bl"] = " ad "
    visits = table.iloc[:3]  # second visits of three subjects
    pd.concat([table, visits]).to_csv(site / "clinical.csv", index=False)
    counts = site_census(site)
    assert counts == expected


def test_census_and_prepare_agree_on_the_diagnoses(cohort_dir: Path, tmp_path: Path) -> None:
    from conf import load_config, to_object
    from preprocessing.dataset import prepare_site

    site = tmp_path / "site"
    shutil.copytree(cohort_dir / "site-1", site)
    table = pd.read_csv(site / "clinical.csv", dtype=str).rename(columns={"DX": "DX_bl"})
    table.to_csv(site / "clinical.csv", index=False)
    ids = list(table.PTID)

    def stand_in(s: Path) -> tuple[pd.DataFrame, dict]:
        return pd.DataFrame({"rs1": [1] * len(ids)}, index=ids), {}

    cfg = to_object(load_config("tiny").data)
    m = prepare_site(site, tmp_path / "prep", cfg, stand_in, progress=False)
    counts = site_census(site, cfg)
    for dx in ("CN", "MCI", "AD"):
        assert counts[f"n-{dx}"] == sum(s["dx"] == dx for s in m["subjects"])


def test_census_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="clinical.csv"):
        site_census(tmp_path)


def test_census_counts_missing_scans(cohort_dir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(cohort_dir / "site-0", site)
    scans = sorted((site / "mri").iterdir())
    scans[0].unlink()
    counts = site_census(site)
    assert counts["n-scans"] == counts["n-subjects"] - 1
    assert counts["n-complete"] == counts["n-subjects"] - 1


def test_site_threads_follow_the_cpu_share() -> None:
    from client.site import site_threads

    # Three simulated nodes on 2 cores, no Ray in this process: one thread each.
    assert site_threads({"partition-id": 0, "num-partitions": 3}, cpus=2) == 1
    assert site_threads({"partition-id": 0, "num-partitions": 2}, cpus=8) == 4
    assert site_threads({"partition-id": 0, "num-threads": 3}, cpus=8) == 3
    assert site_threads({"data-path": "/x"}, cpus=8) == 8
