"""Where training data comes from: prepared site folders, or a synthetic test dataset.

Items are dicts: "image" (1, H, W) float32 in [0, 1], "genotypes" (n_snps,) int64 in
{0, 1, 2, 3=missing}, "label" int64 in {0: CN, 1: MCI, 2: AD}, "subject_id" str.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset

from conf.schema import DataConfig
from g2i_models.snp_encoder import MISSING_GENOTYPE


class DataSourceError(RuntimeError):
    """Training data cannot be found or loaded; the message says what to run."""


class SyntheticSliceDataset(Dataset):
    """Synthetic test dataset: brain-like ellipse slices whose ventricles grow with disease.

    Not a model of real anatomy: a fast, deterministic stand-in for tests and smoke runs.
    SNP 0 is an APOE e4 count; liability = 0.8 * e4 + polygenic score over SNPs 1..9 + noise
    sets the label (CN / MCI / AD by tertile) and the ventricle size, so genotype and label
    both show in the image. Item ``i`` depends only on (seed, i).
    """

    def __init__(self, n: int = 64, image_size: int = 64, n_snps: int = 20, seed: int = 0) -> None:
        if n_snps < 2:
            raise ValueError("SyntheticSliceDataset needs n_snps >= 2")
        self.n, self.image_size, self.n_snps, self.seed = n, image_size, n_snps, seed
        # Named like a prepared panel, so APOE-aware evaluation finds column 0.
        self.snp_names = ["APOE_e4", *(f"snp{i}" for i in range(1, n_snps))]
        g = torch.Generator().manual_seed(seed)
        self.maf = 0.1 + 0.35 * torch.rand(n_snps, generator=g)
        self.maf[0] = 0.15  # APOE e4 allele frequency
        coords = torch.linspace(-1.0, 1.0, image_size)
        self.yy, self.xx = torch.meshgrid(coords, coords, indexing="ij")

    def __len__(self) -> int:
        return self.n

    def _genotypes(self, g: torch.Generator) -> torch.Tensor:
        alleles = torch.rand(2, self.n_snps, generator=g) < self.maf
        genotypes = alleles.sum(0).long()
        missing = torch.rand(self.n_snps, generator=g) < 0.02
        missing[0] = False
        return torch.where(missing, MISSING_GENOTYPE, genotypes)

    def _ellipse(self, cx: float, cy: float, rx: float, ry: float) -> torch.Tensor:
        d = ((self.xx - cx) / rx) ** 2 + ((self.yy - cy) / ry) ** 2
        return torch.sigmoid((1.0 - d) * 12.0)  # soft edge

    def __getitem__(self, i: int) -> dict[str, object]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        genotypes = self._genotypes(g)
        known = genotypes[1:10].clamp(max=2).float()
        prs = (known - 2 * self.maf[1:10]).sum().item() * 0.3
        liability = 0.8 * genotypes[0].item() + prs + 0.5 * torch.randn(1, generator=g).item()
        label = 0 if liability < 0.3 else (1 if liability < 1.0 else 2)
        severity = 0.5 * label + 0.25 * genotypes[0].item()
        jitter = 0.04 * torch.randn(2, generator=g)
        cx, cy = jitter.tolist()
        brain = self._ellipse(cx, cy, 0.72, 0.86)
        cortex = brain - self._ellipse(cx, cy, 0.62, 0.76)
        image = 0.55 * brain + 0.3 * cortex.clamp(min=0)
        # Two lateral ventricles (dark) that widen and lengthen with severity.
        rx, ry = 0.07 + 0.06 * severity, 0.22 + 0.06 * severity
        for side in (-1.0, 1.0):
            ventricle = self._ellipse(cx + side * (0.1 + 0.03 * severity), cy - 0.05, rx, ry)
            image = image * (1.0 - 0.85 * ventricle)
        image = image + 0.02 * torch.randn(image.shape, generator=g)
        return {
            "image": image.clamp(0.0, 1.0).unsqueeze(0).float(),
            "genotypes": genotypes,
            "label": torch.tensor(label, dtype=torch.long),
            "subject_id": f"synthetic-{self.seed}-{i:05d}",
        }


def _site_loader() -> Callable[[Path, str], Dataset]:
    """``load_site_dataset(path, split)`` of the imaging pipeline (package or module level)."""
    for name in ("preprocessing", "preprocessing.dataset"):
        try:
            return importlib.import_module(name).load_site_dataset
        except (ImportError, AttributeError):
            continue
    raise DataSourceError(
        "data.source=site needs preprocessing.load_site_dataset (the imaging pipeline), "
        "which is not available. Prepare sites with `g2i-prepare site_dir=... "
        "output_dir=...` once it exists, or train on the built-in synthetic test data "
        "with `g2i-train data.source=synthetic`."
    )


def site_folders(root: Path) -> list[Path]:
    """A prepared site folder (holding manifest.json), or the prepared sites under it:
    ``<root>/<site>/`` (g2i-prepare) or ``<root>/[prepared/]<site>/prepared/`` (federation)."""
    if (root / "manifest.json").is_file():
        return [root]
    # g2i-prepare output (<root>/<site>/manifest.json), or the folders a federation prepares
    # at its sites (<cohort>/prepared/<site>/prepared/manifest.json).
    sites: list[Path] = []
    for pattern in (
        "*/manifest.json",
        "*/prepared/manifest.json",
        "prepared/*/prepared/manifest.json",
    ):
        sites = sorted(p.parent for p in root.glob(pattern))
        if sites:
            break
    if not sites:
        raise DataSourceError(
            f"{root}: no prepared site (manifest.json) here or in its subfolders; run "
            "`g2i-prepare site_dir=... output_dir=...` and point data.root at its output, "
            "or train on the built-in synthetic test data with data.source=synthetic"
        )
    return sites


def load_split(cfg: DataConfig, split: str, seed: int = 0) -> Dataset:
    """One split ("train", "val" or "test") of ``cfg.source``, pooled over the prepared sites
    under ``cfg.root``; the synthetic source draws a separate set per split."""
    if cfg.source == "synthetic":
        offset = {"train": 0, "val": 1, "test": 2}[split]
        n = 160 if split == "train" else max(8, math.ceil(160 * cfg.val_fraction))
        return SyntheticSliceDataset(n, cfg.image_size, seed=seed + offset)
    if cfg.source != "site":
        raise ValueError(f"unknown data.source={cfg.source!r}; use 'site' or 'synthetic'")
    load_site_dataset = _site_loader()
    parts = [load_site_dataset(site, split) for site in site_folders(Path(cfg.root))]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def snp_names(dataset: Dataset) -> list[str]:
    """The panel (SNP column names) of a prepared dataset, or of the first of a pooled one."""
    while isinstance(dataset, ConcatDataset):
        dataset = dataset.datasets[0]
    names = getattr(dataset, "snp_names", None)
    if names is None:
        raise ValueError(f"{type(dataset).__name__} does not name its SNP columns (snp_names)")
    return list(names)


def load_datasets(cfg: DataConfig, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, val) datasets for ``cfg.source``: "site" (one prepared site, or all prepared
    sites under ``cfg.root`` pooled) or "synthetic"."""
    if cfg.source == "synthetic":
        n_val = max(8, math.ceil(160 * cfg.val_fraction))
        return (
            SyntheticSliceDataset(160, cfg.image_size, seed=seed),
            SyntheticSliceDataset(n_val, cfg.image_size, seed=seed + 1),
        )
    if cfg.source != "site":
        raise ValueError(f"unknown data.source={cfg.source!r}; use 'site' or 'synthetic'")
    load_site_dataset = _site_loader()
    sites = site_folders(Path(cfg.root))
    train = [load_site_dataset(site, "train") for site in sites]
    val = [load_site_dataset(site, "val") for site in sites]
    if len(sites) == 1:
        return train[0], val[0]
    return ConcatDataset(train), ConcatDataset(val)
