"""The per-site dataset: clinical table + genotype panel + MRI slices, joined by subject ID.

``prepare_site`` writes a versioned cache::

    OUT/manifest.json   config and its hash, input fingerprint, library versions, subjects
                        (ID, label, split, row), SNP names, exclusions with reasons
    OUT/images.npy      (n_subjects, n_slices, S, S) float32 in [0, 1] (percentile scaling)
    OUT/genotypes.npy   (n_subjects, n_snps) int8: copies of the risk allele 0/1/2, 3 missing

and ``load_site_dataset(OUT, split)`` serves it to torch. Scans are processed one at a time
(never the whole cohort in memory); a subject with a missing modality or a bad scan is
excluded with its reason and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from conf.schema import DataConfig
from preprocessing.errors import G2IError, ImageFormatError
from preprocessing.imaging import SliceSpec, extract_slices
from preprocessing.versions import package_versions

CACHE_VERSION = 1
LABELS = ("CN", "MCI", "AD")
MISSING_CODE = 3
SPLITS = ("train", "val", "test")
# Called with the site folder; returns the genotype table (index = subject ID, columns = SNP
# names, values 0/1/2, missing as -1 or NaN) and a JSON-able report kept in the manifest.
GenotypeSource = Callable[[Path], tuple[pd.DataFrame, dict[str, Any]]]


def map_diagnoses(clinical: pd.DataFrame, cfg: DataConfig) -> pd.Series:
    """Diagnosis label (0 CN, 1 MCI, 2 AD, or NaN when missing / unknown) per row.

    ``cfg.dx_column`` ``auto`` takes ``DX`` when present, else ``DX_bl``; ``cfg.dx_map`` maps
    ADNI vocabularies (CN, SMC, EMCI, LMCI, MCI, AD, Dementia) onto the three classes.
    """
    column = cfg.dx_column
    if column == "auto":
        column = next((c for c in ("DX", "DX_bl") if c in clinical.columns), "")
    if column not in clinical.columns:
        raise G2IError(
            f"clinical table has no diagnosis column (looked for {cfg.dx_column!r}; columns: "
            f"{list(clinical.columns)}); set data.dx_column"
        )
    mapping = {str(k).strip().upper(): v for k, v in cfg.dx_map.items()}
    names = clinical[column].astype("string").str.strip().str.upper()
    return names.map(lambda v: LABELS.index(mapping[v]) if v in mapping else np.nan)


def stratified_split(
    ids: list[str], labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Subject -> split, stratified by label; each subject in exactly one split."""
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for lab in np.unique(labels):
        members = [i for i, lb in zip(ids, labels, strict=True) if lb == lab]
        members = [members[k] for k in rng.permutation(len(members))]
        n_test = int(round(test_fraction * len(members)))
        n_val = int(round(val_fraction * len(members)))
        for k, sid in enumerate(members):
            out[sid] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def _fingerprint(paths: list[Path], extra: Any) -> str:
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def config_hash(cfg: DataConfig, seed: int) -> str:
    payload = {"data": asdict(cfg), "seed": seed, "cache_version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _scan_path(mri_dir: Path, sid: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        p = mri_dir / f"{sid}{ext}"
        if p.exists():
            return p
    return None


def prepare_site(
    site_dir: str | Path,
    output_dir: str | Path,
    cfg: DataConfig,
    genotypes: GenotypeSource,
    seed: int = 0,
    progress: bool = True,
    inputs_key: str = "",
) -> dict[str, Any]:
    """Build (or reuse) the cached dataset of one site; returns the manifest.

    Args:
        site_dir: folder with ``clinical.csv``, ``genotypes.bed/.bim/.fam`` and ``mri/``.
        output_dir: cache folder; reused as is when inputs and config are unchanged.
        cfg: the data config (slices, normalisation, splits, diagnosis vocabulary).
        genotypes: called with ``site_dir``, returns the QC'd panel table (subject x SNP)
            and its report (``preprocessing.site.site_genotype_panel``).
        seed: seed of the train / val / test split.
        inputs_key: anything else the result depends on (the federation's SNP keep-list),
            part of the input fingerprint.
    """
    site = Path(site_dir)
    out = Path(output_dir)
    clinical_path = site / "clinical.csv"
    if not clinical_path.exists():
        raise G2IError(f"{clinical_path}: missing; every site needs a clinical table")
    mri_dir = site / "mri"
    inputs = [clinical_path, *site.glob("genotypes.*"), *mri_dir.glob("*.nii*")]
    c_hash = config_hash(cfg, seed)
    i_hash = _fingerprint(inputs, {"site": str(site.resolve()), "key": inputs_key})
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("config_hash") == c_hash and old.get("inputs_hash") == i_hash:
            return old

    clinical = pd.read_csv(clinical_path, dtype={"PTID": str})
    if "PTID" not in clinical.columns:
        raise G2IError(f"{clinical_path}: no PTID column")
    labels = map_diagnoses(clinical, cfg)
    table, genotype_report = genotypes(site)
    exclusions: list[dict[str, str]] = []
    candidates: list[tuple[str, int, Path]] = []
    for sid, label in zip(clinical["PTID"], labels, strict=True):
        reasons = []
        if pd.isna(label):
            reasons.append("no usable diagnosis")
        if sid not in table.index:
            reasons.append("no genotypes after QC")
        scan = _scan_path(mri_dir, sid)
        if scan is None:
            reasons.append("no MRI scan")
        if reasons:
            exclusions.append({"subject": sid, "reason": "; ".join(reasons)})
        else:
            candidates.append((sid, int(label), scan))
    for sid in sorted(set(table.index) - set(clinical["PTID"])):
        exclusions.append({"subject": str(sid), "reason": "genotyped but not in clinical.csv"})

    spec = SliceSpec(cfg.slice_z_mm, cfg.n_slices, cfg.slice_spacing_mm, cfg.image_size)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # an interrupted build must not look valid
    shape = (len(candidates), spec.n_slices, spec.image_size, spec.image_size)
    staging = open_memmap(out / "images.partial.npy", mode="w+", dtype=np.float32, shape=shape)
    kept: list[tuple[str, int]] = []
    bar = tqdm(candidates, desc=f"slices {site.name}", unit="scan", disable=not progress)
    for sid, label, scan in bar:
        try:
            staging[len(kept)] = extract_slices(
                scan, spec, cfg.normalization, tuple(cfg.intensity_percentiles)
            )
        except ImageFormatError as exc:
            exclusions.append({"subject": sid, "reason": f"bad scan: {exc}"})
            continue
        kept.append((sid, label))
    staging.flush()
    if len(kept) == len(candidates):
        del staging
        (out / "images.partial.npy").replace(out / "images.npy")
    else:
        # Bad scans left rows unused at the end: copy the kept rows into a file of their size.
        images = open_memmap(
            out / "images.npy", mode="w+", dtype=np.float32, shape=(len(kept), *shape[1:])
        )
        for i in range(len(kept)):
            images[i] = staging[i]
        images.flush()
        del images, staging
        (out / "images.partial.npy").unlink()

    snp_names = [str(c) for c in table.columns]
    geno = table.loc[[sid for sid, _ in kept]].to_numpy(dtype=np.float64)
    codes = np.where(np.isnan(geno) | (geno < 0), MISSING_CODE, geno).astype(np.int8)
    np.save(out / "genotypes.npy", codes)

    ids = [sid for sid, _ in kept]
    labs = np.array([lab for _, lab in kept])
    split = stratified_split(ids, labs, cfg.val_fraction, cfg.test_fraction, seed)
    manifest = {
        "cache_version": CACHE_VERSION,
        "site": site.name,
        "config": asdict(cfg),
        "seed": seed,
        "config_hash": c_hash,
        "inputs_hash": i_hash,
        "versions": package_versions(("g2i-fed", "numpy", "nibabel", "scipy", "torch")),
        "image_shape": list(shape[1:]),
        "slice_space": "MNI152 mm canvas: rows y +91..-126, columns x -108.5..+108.5",
        "slice_z_mm": spec.z_levels.tolist(),
        "snp_names": snp_names,
        "genotype_report": genotype_report,
        "subjects": [
            {"id": sid, "label": int(lab), "dx": LABELS[lab], "split": split[sid], "row": i}
            for i, (sid, lab) in enumerate(kept)
        ],
        "exclusions": exclusions,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return manifest


class SiteDataset(torch.utils.data.Dataset):
    """Items: ``image`` (n_slices, S, S) float32 in [0, 1], ``genotypes`` (n_snps,) int64
    (0/1/2, 3 missing), ``label`` int64 (0 CN, 1 MCI, 2 AD), ``subject_id`` str."""

    def __init__(self, path: str | Path, split: str | None = "train") -> None:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path}: no prepared dataset; run g2i-prepare")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        self.manifest = json.loads(manifest_path.read_text())
        self.subjects = [s for s in self.manifest["subjects"] if split in (None, s["split"])]
        self.snp_names: list[str] = self.manifest["snp_names"]
        self._images = np.load(path / "images.npy", mmap_mode="r")
        self._genotypes = np.load(path / "genotypes.npy")

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.subjects[i]
        return {
            "image": torch.from_numpy(np.array(self._images[s["row"]])),
            "genotypes": torch.from_numpy(self._genotypes[s["row"]].astype(np.int64)),
            "label": torch.tensor(s["label"], dtype=torch.int64),
            "subject_id": s["id"],
        }


def load_site_dataset(path: str | Path, split: str | None = "train") -> SiteDataset:
    """The prepared dataset at ``path`` (``split`` train / val / test, or None for all)."""
    return SiteDataset(path, split)
