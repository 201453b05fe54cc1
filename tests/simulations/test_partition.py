"""A simulated node's own partition: the bytes of the full cohort's site, generated once."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from client.site import SiteDataMissing, simulated_site_path, site_data_path
from simulations.partition import CACHE_ENV, cohort_key, ensure_partition

from ..conftest import small_cohort_config


def _files(site: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(site)): p.read_bytes()
        for p in sorted(site.rglob("*"))
        if p.is_file() and p.name != "site.json"
    }


def test_partition_is_the_full_cohorts_site(cohort_dir: Path, tmp_path: Path) -> None:
    site = ensure_partition(small_cohort_config(), 11, 1, tmp_path)
    assert site.is_absolute() and site.name == "site-1"
    assert not (site.parent / "site-0").exists() and not (site.parent / "truth").exists()
    assert _files(site) == _files(cohort_dir / "site-1")
    marker = json.loads((site / "site.json").read_text())
    assert (marker["seed"], marker["site"]) == (11, 1)


def test_simulated_node_generates_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cohort = small_cohort_config(subjects_per_site=[6, 6], n_sites=2, write_mri=False)
    node = {"partition-id": 1, "num-partitions": 3}
    site = simulated_site_path(node, "data/cohort", cohort, 5)
    # Three partitions asked for, so a 3-site cohort; the key names config and seed.
    key = cohort_key(replace(cohort, n_sites=3, workers=1), 5)
    assert site == (tmp_path / "cache" / key / "site-1").resolve()
    assert (site / "clinical.csv").exists()
    stamp = (site / "clinical.csv").stat().st_mtime_ns
    assert simulated_site_path(node, "data/cohort", cohort, 5) == site
    assert (site / "clinical.csv").stat().st_mtime_ns == stamp
    assert simulated_site_path(node, "data/cohort", cohort, 6) != site  # another seed


def test_simulated_node_uses_existing_site_data(cohort_dir: Path, tmp_path: Path) -> None:
    site = simulated_site_path({"partition-id": 2}, str(cohort_dir), small_cohort_config(), 0)
    assert site == (cohort_dir / "site-2").resolve()


def test_deployed_node_with_missing_data_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SiteDataMissing, match="data-path .*not a folder"):
        site_data_path({"data-path": str(tmp_path / "absent")}, "ignored")
