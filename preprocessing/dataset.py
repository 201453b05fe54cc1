"""The per-site dataset: clinical table + genotype panel + MRI slices, joined by subject ID.

``prepare_site`` writes a versioned cache::

    OUT/manifest.json   config and its hash, input fingerprint, library versions, subjects
                        (ID, label, split, row), SNP names, exclusions with reasons, warnings
    OUT/images.npy      (n_subjects, n_slices, S, S) float32 in [0, 1] (percentile scaling)
    OUT/genotypes.npy   (n_subjects, n_snps) int8: copies of the risk allele 0/1/2, 3 missing

and ``load_site_dataset(OUT, split)`` serves it to torch. Scans are processed one at a time
(never the whole cohort in memory); a subject with a missing modality or a bad scan (any
failure while reading it) is excluded with its reason and the run goes on. Problems of the
site as a whole (an unreadable clinical table, IDs that do not join, no usable subject) stop
it with an error naming the file.

The cache is reused only when every input (clinical table, PLINK fileset, scans, SNP catalog)
is unchanged by content (BLAKE2b) and the config is the same; files are written under
temporary names and renamed into place, the manifest last, and a lock file makes a second run
on the same folder wait for the first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from conf.schema import DataConfig
from preprocessing.errors import (
    CacheLockedError,
    EmptySplitError,
    GenotypeFormatError,
    NoUsableSubjectsError,
    SiteDataError,
)
from preprocessing.imaging import SliceSpec, extract_slices
from preprocessing.panel import default_catalog_path
from preprocessing.site_inputs import (
    LABELS,
    ClinicalTable,
    check_join,
    genotyped_ids,
    map_diagnoses,
    read_clinical,
    scan_files,
)
from preprocessing.versions import package_versions

__all__ = ["LABELS", "MISSING_CODE", "SPLITS", "load_site_dataset", "map_diagnoses"]
__all__ += ["prepare_site", "stratified_split", "SiteDataset"]

log = logging.getLogger(__name__)

CACHE_VERSION = 2
MISSING_CODE = 3
SPLITS = ("train", "val", "test")
LOCK_NAME = ".prepare.lock"
# Called with the site folder; returns the genotype table (index = subject ID, columns = SNP
# names, values 0/1/2, missing as -1 or NaN) and a JSON-able report kept in the manifest.
GenotypeSource = Callable[[Path], tuple[pd.DataFrame, dict[str, Any]]]


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


def file_digest(path: Path) -> str:
    """BLAKE2b of a file's bytes, or why it cannot be read (a broken link, a missing file)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        return f"unreadable: {type(exc).__name__}"
    return h.hexdigest()


def _fingerprint(paths: Sequence[Path], extra: Any) -> str:
    """Hash of the inputs' names and contents (not sizes or times: ``cp -p`` and ``rsync -a``
    keep those) and of ``extra``."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for p in sorted(paths, key=str):
        h.update(f"{p}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


def config_hash(cfg: DataConfig, seed: int) -> str:
    payload = {"data": asdict(cfg), "seed": seed, "cache_version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@contextmanager
def _build_lock(out: Path, timeout_s: float) -> Iterator[None]:
    """Hold ``out/.prepare.lock``; wait up to ``timeout_s`` for another run to release it."""
    with open(out / LOCK_NAME, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                if time.monotonic() >= deadline:
                    raise CacheLockedError(
                        f"{out}: another g2i-prepare (pid {holder}) is building this folder; "
                        "wait for it to finish, or give this run another output_dir"
                    ) from None
                if not waited:
                    log.warning("%s: waiting for another g2i-prepare (pid %s)", out, holder)
                    waited = True
                time.sleep(0.2)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _reusable(out: Path, c_hash: str, i_hash: str) -> dict[str, Any] | None:
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return None
    if old.get("config_hash") == c_hash and old.get("inputs_hash") == i_hash:
        return old
    return None


def count_reasons(exclusions: list[dict[str, str]]) -> dict[str, int]:
    """Subjects per exclusion reason; a subject with several reasons counts under each, and
    per-scan details (``bad scan: <file>: why``) count under their kind."""
    counts: Counter[str] = Counter()
    for e in exclusions:
        for reason in e["reason"].split("; "):
            kind = reason.split(":")[0]
            counts["conflicting diagnoses" if kind.startswith("conflicting") else kind] += 1
    return dict(counts.most_common())


def prepare_site(
    site_dir: str | Path,
    output_dir: str | Path,
    cfg: DataConfig,
    genotypes: GenotypeSource,
    seed: int = 0,
    progress: bool = True,
    inputs_key: str = "",
    extra_inputs: Sequence[str | Path] | None = None,
    lock_timeout_s: float = 3600.0,
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
        extra_inputs: other files the genotype step reads (the SNP catalog), hashed by
            content; default: the shipped catalog.
        lock_timeout_s: how long to wait for another run building ``output_dir``.

    Raises:
        ClinicalTableError, GenotypeFormatError: an unreadable table or fileset, duplicated
            IIDs, IDs that do not join (leading zeros, IDs in another column).
        NoUsableSubjectsError: no subject left, with the count per reason.
        CacheLockedError: another run still holds ``output_dir`` after ``lock_timeout_s``.
    """
    site = Path(site_dir)
    out = Path(output_dir)
    clinical = read_clinical(site / "clinical.csv", cfg)
    mri_dir = site / "mri"
    if not mri_dir.is_dir():
        raise SiteDataError(
            f"{mri_dir}: missing; put one T1 scan per subject there, named <PTID>.nii.gz"
        )
    scans = scan_files(mri_dir)
    fam = site / "genotypes.fam"
    in_fam = set(genotyped_ids(fam)) if fam.exists() else None
    check_join(clinical, in_fam or set(), {s for s, p in scans.items() if p.exists()})
    extra = [default_catalog_path()] if extra_inputs is None else [Path(p) for p in extra_inputs]
    inputs = [clinical.path, *site.glob("genotypes.*"), *scans.values(), *extra]
    c_hash = config_hash(cfg, seed)
    i_hash = _fingerprint(inputs, {"site": str(site.resolve()), "key": inputs_key})
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out, lock_timeout_s):
        old = _reusable(out, c_hash, i_hash)
        if old is not None:
            return old
        (out / "manifest.json").unlink(missing_ok=True)  # a failed build must not look valid
        manifest = _build(site, out, cfg, genotypes, seed, progress, clinical, scans, in_fam)
        manifest.update({"config_hash": c_hash, "inputs_hash": i_hash})
        _write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def _genotype_table(site: Path, genotypes: GenotypeSource) -> tuple[pd.DataFrame, dict]:
    table, report = genotypes(site)
    table = table.copy()
    table.index = table.index.astype(str)
    dups = sorted(set(table.index[table.index.duplicated()]))
    if dups:  # a GenotypeSource other than ours; ours refuses them at the .fam
        raise GenotypeFormatError(
            f"the genotype table has subject(s) {dups[:3]} on more than one row; keep one "
            "row per subject",
            site / "genotypes.fam",
        )
    return table, report


def _no_usable_subject(
    site: Path, out: Path, n_clinical: int, exclusions: list[dict[str, str]]
) -> NoReturn:
    """Write every subject's reason to ``out/exclusions.json`` and raise with the counts."""
    _write_text(out / "exclusions.json", json.dumps(exclusions, indent=2) + "\n")
    reasons = count_reasons(exclusions)
    listed = ", ".join(f"{n} {r}" for r, n in reasons.items())
    raise NoUsableSubjectsError(
        f"{site}: no usable subject of {n_clinical} in clinical.csv ({listed}); each needs a "
        "diagnosis, genotypes that pass QC and a readable MNI-registered scan "
        f"mri/<PTID>.nii.gz (every subject's reason: {out / 'exclusions.json'})",
        reasons,
    )


def _build(
    site: Path,
    out: Path,
    cfg: DataConfig,
    genotypes: GenotypeSource,
    seed: int,
    progress: bool,
    clinical: ClinicalTable,
    scans: dict[str, Path],
    in_fam: set[str] | None,
) -> dict[str, Any]:
    table, genotype_report = _genotype_table(site, genotypes)
    exclusions: list[dict[str, str]] = []
    candidates: list[tuple[str, int, Path]] = []
    for sid, subject in clinical.subjects.iterrows():
        reasons = []
        if subject["conflict"]:
            reasons.append(subject["conflict"])
        elif pd.isna(subject["label"]):
            reasons.append("no usable diagnosis")
        if sid not in table.index:
            absent = in_fam is not None and sid not in in_fam
            reasons.append("not in genotypes.fam" if absent else "no genotypes after QC")
        scan = scans.get(sid)
        if scan is None:
            reasons.append("no MRI scan")
        elif not scan.exists():
            reasons.append(f"broken scan link: {scan.name} -> {os.readlink(scan)}")
        if reasons:
            exclusions.append({"subject": sid, "reason": "; ".join(reasons)})
        else:
            candidates.append((sid, int(subject["label"]), scan))
    for sid in sorted(set(table.index) - set(clinical.subjects.index)):
        exclusions.append({"subject": str(sid), "reason": "genotyped but not in clinical.csv"})

    if not candidates:
        _no_usable_subject(site, out, len(clinical.subjects), exclusions)
    spec = SliceSpec(cfg.slice_z_mm, cfg.n_slices, cfg.slice_spacing_mm, cfg.image_size)
    shape = (len(candidates), spec.n_slices, spec.image_size, spec.image_size)
    partial = out / "images.partial.npy"
    staging = open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
    kept: list[tuple[str, int]] = []
    bar = tqdm(candidates, desc=f"slices {site.name}", unit="scan", disable=not progress)
    for sid, label, scan in bar:
        try:
            staging[len(kept)] = extract_slices(
                scan,
                spec,
                cfg.normalization,
                tuple(cfg.intensity_percentiles),
                cfg.mni_min_correlation,
            )
        except Exception as exc:  # noqa: BLE001 - one scan must not take the site down
            exclusions.append({"subject": sid, "reason": f"bad scan: {exc}"})
            continue
        kept.append((sid, label))
    staging.flush()
    if not kept:
        del staging
        partial.unlink()
        _no_usable_subject(site, out, len(clinical.subjects), exclusions)
    if len(kept) == len(candidates):
        del staging
    else:
        # Bad scans left rows unused at the end: copy the kept rows into a file of their size.
        trimmed = out / "images.trim.npy"
        images = open_memmap(trimmed, mode="w+", dtype=np.float32, shape=(len(kept), *shape[1:]))
        for i in range(len(kept)):
            images[i] = staging[i]
        images.flush()
        del images, staging
        trimmed.replace(partial)
    partial.replace(out / "images.npy")

    ids = [sid for sid, _ in kept]
    assert len(set(ids)) == len(ids), "one subject twice in the cache"
    snp_names = [str(c) for c in table.columns]
    geno = table.loc[ids].to_numpy(dtype=np.float64)
    codes = np.where(np.isnan(geno) | (geno < 0), MISSING_CODE, geno).astype(np.int8)
    with open(out / "genotypes.partial.npy", "wb") as fh:
        np.save(fh, codes)
    (out / "genotypes.partial.npy").replace(out / "genotypes.npy")
    (out / "exclusions.json").unlink(missing_ok=True)

    labs = np.array([lab for _, lab in kept])
    split = stratified_split(ids, labs, cfg.val_fraction, cfg.test_fraction, seed)
    sizes = {s: sum(v == s for v in split.values()) for s in SPLITS}
    warnings = [
        f"the {s} split is empty ({len(ids)} subjects, data.{s}_fraction={frac:g}); "
        f"raise data.{s}_fraction or add subjects"
        for s, frac in (("val", cfg.val_fraction), ("test", cfg.test_fraction))
        if sizes[s] == 0
    ]
    return {
        "cache_version": CACHE_VERSION,
        "site": site.name,
        "config": asdict(cfg),
        "seed": seed,
        "versions": package_versions(("g2i-fed", "numpy", "nibabel", "scipy", "torch")),
        "image_shape": list(shape[1:]),
        "slice_space": "MNI152 mm canvas: rows y +91..-126, columns x -108.5..+108.5",
        "slice_z_mm": spec.z_levels.tolist(),
        "snp_names": snp_names,
        "genotype_report": genotype_report,
        "clinical": {
            "encoding": clinical.encoding,
            "dx_column": clinical.dx_column,
            "notes": clinical.notes,
        },
        "split_sizes": sizes,
        "warnings": warnings,
        "subjects": [
            {"id": sid, "label": int(lab), "dx": LABELS[lab], "split": split[sid], "row": i}
            for i, (sid, lab) in enumerate(kept)
        ],
        "exclusions": exclusions,
    }


class SiteDataset(torch.utils.data.Dataset):
    """Items: ``image`` (n_slices, S, S) float32 in [0, 1], ``genotypes`` (n_snps,) int64
    (0/1/2, 3 missing), ``label`` int64 (0 CN, 1 MCI, 2 AD), ``subject_id`` str."""

    def __init__(
        self, path: str | Path, split: str | None = "train", require_nonempty: bool = False
    ) -> None:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path}: no prepared dataset; run g2i-prepare")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        self.manifest = json.loads(manifest_path.read_text())
        self.subjects = [s for s in self.manifest["subjects"] if split in (None, s["split"])]
        if require_nonempty and not self.subjects:
            raise EmptySplitError(
                f"{path}: the {split!r} split of site {self.manifest.get('site')} is empty "
                f"({len(self.manifest['subjects'])} subjects); raise data.{split}_fraction or "
                "add subjects, then rerun g2i-prepare"
            )
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


def load_site_dataset(
    path: str | Path, split: str | None = "train", require_nonempty: bool = False
) -> SiteDataset:
    """The prepared dataset at ``path`` (``split`` train / val / test, or None for all).

    With ``require_nonempty`` an empty split raises ``EmptySplitError`` naming the site;
    the manifest's ``warnings`` already say so at preparation."""
    return SiteDataset(path, split, require_nonempty)
