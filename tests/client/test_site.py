from __future__ import annotations

from pathlib import Path

import pytest

from client.site import site_data_path
from preprocessing.census import site_census


def test_site_path_from_node_config() -> None:
    assert site_data_path({"data-path": "/data/site-a"}, "ignored") == Path("/data/site-a")
    assert site_data_path({"partition-id": 2, "num-partitions": 3}, "/c") == Path("/c/site-2")
    with pytest.raises(KeyError, match="data-path"):
        site_data_path({}, "/c")


def test_census_counts_only_aggregates(cohort_dir: Path) -> None:
    counts = site_census(cohort_dir / "site-1")
    assert counts == {
        "n-CN": counts["n-CN"],
        "n-MCI": counts["n-MCI"],
        "n-AD": counts["n-AD"],
        "n-subjects": 40,
        "n-scans": 40,
        "n-genotyped": 40,
        "n-complete": 40,
    }
    assert counts["n-CN"] + counts["n-MCI"] + counts["n-AD"] == 40
    assert all(isinstance(v, int) for v in counts.values())


def test_census_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="clinical.csv"):
        site_census(tmp_path)


def test_census_counts_missing_scans(cohort_dir: Path, tmp_path: Path) -> None:
    import shutil

    site = tmp_path / "site"
    shutil.copytree(cohort_dir / "site-0", site)
    scans = sorted((site / "mri").iterdir())
    scans[0].unlink()
    counts = site_census(site)
    assert counts["n-scans"] == counts["n-subjects"] - 1
    assert counts["n-complete"] == counts["n-subjects"] - 1
