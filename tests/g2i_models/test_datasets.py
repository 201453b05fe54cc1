import sys
import types

import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from conf.schema import DataConfig
from g2i_models.datasets import (
    DataSourceError,
    SyntheticSliceDataset,
    load_datasets,
    site_folders,
)


def test_synthetic_items_follow_the_dataset_format() -> None:
    ds = SyntheticSliceDataset(n=6, image_size=32, n_snps=15, seed=2)
    item = ds[3]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["genotypes"].shape == (15,) and item["genotypes"].dtype == torch.int64
    assert set(item["genotypes"].tolist()) <= {0, 1, 2, 3}
    assert int(item["label"]) in (0, 1, 2)
    assert torch.equal(ds[3]["image"], SyntheticSliceDataset(6, 32, 15, seed=2)[3]["image"])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].shape == (4,)


def test_synthetic_ventricles_grow_with_disease() -> None:
    ds = SyntheticSliceDataset(n=120, image_size=32, seed=0)
    dark = {0: [], 2: []}
    for i in range(len(ds)):
        item = ds[i]
        if int(item["label"]) in dark:
            centre = item["image"][0, 8:24, 8:24]
            dark[int(item["label"])].append((centre < 0.2).float().mean().item())
    assert sum(dark[2]) / len(dark[2]) > 1.5 * sum(dark[0]) / len(dark[0])


def test_synthetic_source() -> None:
    train, val = load_datasets(DataConfig(source="synthetic", image_size=32))
    assert train[0]["image"].shape == (1, 32, 32)
    assert train[0]["subject_id"] != val[0]["subject_id"]


def test_site_source_without_imaging_pipeline_says_what_to_run(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "preprocessing", types.ModuleType("preprocessing"))
    monkeypatch.setitem(sys.modules, "preprocessing.dataset", None)
    with pytest.raises(DataSourceError, match="g2i-prepare.*data.source=synthetic"):
        load_datasets(DataConfig(root=str(tmp_path)))


def test_site_source_pools_prepared_sites(monkeypatch, tmp_path) -> None:
    for site in ("site-a", "site-b"):
        (tmp_path / site).mkdir()
        (tmp_path / site / "manifest.json").write_text("{}")
    calls = []

    def load_site_dataset(path, split):
        calls.append((path.name, split))
        return SyntheticSliceDataset(n=4, image_size=16)

    fake = types.ModuleType("preprocessing")
    fake.load_site_dataset = load_site_dataset
    monkeypatch.setitem(sys.modules, "preprocessing", fake)
    train, val = load_datasets(DataConfig(root=str(tmp_path)))
    assert isinstance(train, ConcatDataset) and len(train) == 8
    assert sorted(calls) == [(s, p) for s in ("site-a", "site-b") for p in ("train", "val")]
    with pytest.raises(DataSourceError, match="manifest.json"):
        load_datasets(DataConfig(root=str(tmp_path / "nowhere")))


def test_site_folders_finds_the_sites_a_federation_prepared(tmp_path) -> None:
    for site in ("site-0", "site-1"):
        (tmp_path / "prepared" / site / "prepared").mkdir(parents=True)
        (tmp_path / "prepared" / site / "prepared" / "manifest.json").write_text("{}")
    expected = [tmp_path / "prepared" / s / "prepared" for s in ("site-0", "site-1")]
    assert site_folders(tmp_path) == expected  # the cohort root
    assert site_folders(tmp_path / "prepared") == expected
    assert site_folders(expected[0]) == [expected[0]]
