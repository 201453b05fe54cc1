"""The shared synthetic set: genotype profiles from federated frequencies, and its files.

Genotype profiles for a diagnosis are drawn SNP by SNP from the pooled per-diagnosis
genotype frequencies (the sites' aggregate counts), so no individual genotype is used.
Files: one NIfTI per image (a single axial slice with its MNI affine), a PNG grid per
diagnosis, and ``manifest.json`` (profile, label, seed of each image).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from g2i_models.plots import CLASS_NAMES, save_sample_grid
from preprocessing.imaging import canvas_to_volume, slice_affine


def genotype_frequencies(per_dx_counts: np.ndarray) -> np.ndarray:
    """(n_dx, n_snps, 4) counts of codes 0/1/2/missing -> (n_dx, n_snps, 3) frequencies of
    0/1/2 among called genotypes (uniform where a SNP has no call for a diagnosis)."""
    called = per_dx_counts[..., :3].astype(np.float64)
    total = called.sum(axis=-1, keepdims=True)
    return np.where(total > 0, called / np.maximum(total, 1), 1.0 / 3.0)


def sample_profiles(freqs: np.ndarray, label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n_snps) int64 genotype profiles for ``label`` drawn from ``freqs`` (n_dx, n_snps, 3)."""
    f = freqs[label]
    u = rng.random((n, f.shape[0], 1))
    return (u > np.cumsum(f, axis=-1)[None]).sum(axis=-1).astype(np.int64)


def write_synthetic_set(
    out_dir: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    genotypes: torch.Tensor,
    panel: Sequence[str],
    seeds: Sequence[int],
    z_mm: float,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write images (B, 1, H, W) in [0, 1] as NIfTI + per-diagnosis PNG grids + manifest."""
    out = Path(out_dir)
    (out / "nifti").mkdir(parents=True, exist_ok=True)
    size = images.shape[-1]
    affine = slice_affine(size, z_mm)
    entries = []
    for i in range(images.shape[0]):
        name = f"synthetic_{i:04d}_{CLASS_NAMES[int(labels[i])]}.nii.gz"
        img = nib.Nifti1Image(
            canvas_to_volume(images[i, 0].cpu().numpy().astype(np.float32)), affine
        )
        img.set_sform(affine, code=4)
        img.set_qform(affine, code=4)
        img.header.set_xyzt_units("mm")
        img.to_filename(str(out / "nifti" / name))
        entries.append(
            {
                "file": f"nifti/{name}",
                "label": CLASS_NAMES[int(labels[i])],
                "seed": int(seeds[i]),
                "genotypes": dict(zip(panel, genotypes[i].tolist(), strict=True)),
            }
        )
    save_sample_grid(images[:96], labels[:96], out / "grid.png", title="synthetic set")
    for k, dx in enumerate(CLASS_NAMES):
        mask = labels == k
        if mask.any():
            one_row = torch.zeros(int(mask.sum()), dtype=torch.long)[:32]
            save_sample_grid(images[mask][:32], one_row, out / f"grid_{dx}.png", [dx],
                             title=f"synthetic {dx}")
    manifest = {
        "z_mm": z_mm,
        "image_size": size,
        "panel": list(panel),
        "images": entries,
        **(extra or {}),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out / "manifest.json"
