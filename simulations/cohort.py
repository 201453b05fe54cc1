"""The synthetic multi-site cohort: real PLINK and NIfTI files plus a truth folder.

Layout written by :func:`simulate_cohort`::

    PATH/cohort.json                     config, seed, versions, sites (self-describing)
    PATH/site-<k>/genotypes.bed|bim|fam  PLINK 1 binary, SNP-major
    PATH/site-<k>/mri/<PTID>.nii.gz      T1 volumes, int16, stored in the site's orientation
    PATH/site-<k>/clinical.csv           PTID, DX, AGE, PTGENDER, APGEN1, APGEN2
    PATH/truth/                          never read by client code: subjects.csv, snps.tsv,
                                         effects.json, qc_planted.json, qc_expected.json,
                                         site_arrays.json, ventricle_curve.csv
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from conf.schema import CohortConfig, QCConfig
from preprocessing.plink_io import Variant, write_plink
from preprocessing.versions import package_versions
from simulations import anatomy
from simulations.genotypes import (
    APOE_SNPS,
    COMPLEMENT,
    DX_NAMES,
    SitePopulation,
    SnpTable,
    build_snp_table,
    expected_qc,
    plant_missingness,
    population_moments,
    samples_for_fam,
    simulate_site_population,
)

FORMAT_VERSION = 1


def _cycle(values: list, k: int) -> Any:
    return values[k % len(values)]


def site_dir(root: str | Path, site: int) -> Path:
    return Path(root) / f"site-{site}"


def _site_array(
    cfg: CohortConfig, snps: SnpTable, calls: np.ndarray, site: int, rng: np.random.Generator
) -> tuple[list[Variant], np.ndarray, dict[str, list[str]]]:
    """The site's own rendering of the array: dropped APOE SNPs, strand flips, swapped order."""
    variants = list(snps.variants)
    calls = calls.copy()
    panel = np.flatnonzero(snps.category == "panel")
    notes: dict[str, list[str]] = {"strand_flipped": [], "allele_swapped": [], "dropped": []}
    n_pick = max(1, int(round(cfg.panel_flip_frac * panel.size)))
    if site in cfg.strand_flip_sites:
        for j in rng.choice(panel, size=n_pick, replace=False):
            v = variants[j]
            variants[j] = replace(v, a1=COMPLEMENT[v.a1], a2=COMPLEMENT[v.a2])
            notes["strand_flipped"].append(v.snp_id)
    if site in cfg.allele_swap_sites:
        for j in rng.choice(panel, size=n_pick, replace=False):
            v = variants[j]
            variants[j] = replace(v, a1=v.a2, a2=v.a1)
            calls[j] = np.where(calls[j] >= 0, 2 - calls[j], -1)
            notes["allele_swapped"].append(v.snp_id)
    keep = np.ones(len(variants), bool)
    if site in cfg.no_apoe_sites:
        for j, v in enumerate(variants):
            if v.snp_id in APOE_SNPS:
                keep[j] = False
                notes["dropped"].append(v.snp_id)
    return [v for v, k in zip(variants, keep, strict=True) if k], calls[keep], notes


def _anatomy_params(
    cfg: CohortConfig, pop: SitePopulation, rng: np.random.Generator
) -> tuple[list[anatomy.SubjectAnatomy], np.ndarray]:
    """Severity of neurodegeneration and the nuisance of each subject at one site."""
    age_z = (pop.age - 73.5) / 7.0
    severity = (
        cfg.atrophy_genetic * pop.genetic_liability
        + cfg.atrophy_age * age_z
        + np.asarray(cfg.atrophy_dx)[pop.dx]
        + rng.normal(0, cfg.atrophy_noise_sd, pop.dx.size)
    )
    gamma0 = _cycle(cfg.site_contrast_gamma, pop.site)
    scale0 = _cycle(cfg.site_intensity_scale, pop.site)
    out = []
    for s in severity:
        r, t = cfg.jitter_rotation_deg, cfg.jitter_translation_mm
        out.append(
            anatomy.SubjectAnatomy(
                ventricle_mm=float(np.clip(cfg.ventricle_mm_per_severity * s, -1.0, 5.0)),
                cortical_mm=float(np.clip(cfg.cortical_mm_per_severity * (s + 1.0), 0.0, 2.5)),
                mtl_loss=float(np.clip(cfg.mtl_loss_per_severity * (s + 1.0), 0.0, 0.7)),
                rotation_deg=tuple(float(v) for v in rng.uniform(-r, r, 3)),
                translation_mm=tuple(float(v) for v in rng.uniform(-t, t, 3)),
                bias_coeffs=tuple(float(v) for v in rng.normal(0, cfg.bias_field_strength / 2, 9)),
                gamma=float(gamma0 * np.exp(rng.normal(0, 0.03))),
                scale=float(scale0 * np.exp(rng.normal(0, 0.05))),
                noise_sd=float(cfg.noise_sd * rng.uniform(0.8, 1.2)),
            )
        )
    return out, severity


def save_nifti(volume: np.ndarray, affine_ras: np.ndarray, orientation: str, path: Path) -> None:
    """Write an int16 volume given on a RAS grid, stored in ``orientation`` (e.g. 'LAS')."""
    img = nib.Nifti1Image(np.clip(np.rint(volume), 0, 32767).astype(np.int16), affine_ras)
    current = nib.orientations.io_orientation(affine_ras)
    target = nib.orientations.axcodes2ornt(tuple(orientation))
    img = img.as_reoriented(nib.orientations.ornt_transform(current, target))
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(img.affine, code=4)  # MNI152 space
    img.set_qform(img.affine, code=4)
    img.to_filename(str(path))


def _render_job(job: tuple) -> tuple[str, dict[str, float]]:
    ptid, anat, shape, affine, orientation, seed_key, path = job
    fields = anatomy.load_template_fields()
    rng = np.random.default_rng(np.random.SeedSequence(seed_key))
    volume, measures = anatomy.render_subject(anat, shape, affine, fields, rng, _stack(fields))
    save_nifti(volume, affine, orientation, Path(path))
    return ptid, measures


_STACKS: dict[int, Any] = {}


def _stack(fields: anatomy.TemplateFields) -> Any:
    # One stacked tensor per process (the template is loaded once per process).
    if id(fields) not in _STACKS:
        _STACKS[id(fields)] = fields.stacked()
    return _STACKS[id(fields)]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _render_all(jobs: list[tuple], workers: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    bar = tqdm(total=len(jobs), desc="MRI volumes", unit="subject")
    if workers <= 1:
        for job in jobs:
            ptid, m = _render_job(job)
            results[ptid] = m
            bar.update()
    else:
        anatomy.load_template_fields()  # load once; forked workers inherit it
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            for ptid, m in pool.map(_render_job, jobs, chunksize=4):
                results[ptid] = m
                bar.update()
    bar.close()
    return results


def simulate_cohort(
    cfg: CohortConfig,
    output_dir: str | Path,
    seed: int = 0,
    overwrite: bool = False,
    sites: Collection[int] | None = None,
) -> Path:
    """Generate the cohort under ``output_dir``; returns the path of ``cohort.json``.

    Deterministic: the same config and seed give the same bytes. An existing cohort made
    with the same config and seed is kept as it is; a different one needs ``overwrite``.

    ``sites``: write only these site folders (each site's random stream is its own, so a
    site's files are the bytes the whole cohort would hold) and no truth folder; each gets
    a ``site.json`` (config, seed, index) and the path of the first one's is returned. A
    simulated federation node generates its own partition this way
    (``simulations.partition``).
    """
    out = Path(output_dir)
    manifest_path = out / "cohort.json"
    config_dict = asdict(cfg)
    only = None if sites is None else {int(k) for k in sites}
    if only is None and manifest_path.exists() and not overwrite:
        old = json.loads(manifest_path.read_text())
        if old.get("config") == config_dict and old.get("seed") == seed:
            return manifest_path
        raise FileExistsError(
            f"{out} holds a cohort made with another config or seed; pass overwrite=true "
            "or choose another output_dir"
        )
    if only is None and out.exists() and overwrite:
        for child in [*out.glob("site-*"), out / "truth", manifest_path]:
            if child.is_dir():
                shutil.rmtree(child)
            elif child.exists():
                child.unlink()
    if cfg.n_sites < 1:
        raise ValueError("cohort.n_sites must be at least 1")
    if only is not None and (not only or not only <= set(range(cfg.n_sites))):
        raise ValueError(f"sites={sorted(only)}: choose among 0..{cfg.n_sites - 1}")

    ss = np.random.SeedSequence(seed)
    snp_ss, moments_ss, *site_ss = ss.spawn(2 + cfg.n_sites)
    snps = build_snp_table(cfg, np.random.default_rng(snp_ss))
    thresholds, prs_moments = population_moments(cfg, snps, np.random.default_rng(moments_ss))
    qc = QCConfig()

    subjects: list[dict[str, Any]] = []
    jobs: list[tuple] = []
    site_arrays: dict[str, Any] = {}
    planted_samples: dict[str, list[str]] = {}
    expected: dict[str, Any] = {}
    pooled_calls, pooled_dx, pooled_sex = [], [], []
    shape, grid_affine = (0, 0, 0), np.eye(4)
    if cfg.write_mri:
        shape, grid_affine = anatomy.output_grid(cfg.voxel_size_mm, anatomy.load_template_fields())
    for k in range(cfg.n_sites):
        if only is not None and k not in only:
            continue  # each site's stream is its own: skipping one changes no other
        pop_rng, qc_rng, array_rng, anat_rng = (
            np.random.default_rng(s) for s in site_ss[k].spawn(4)
        )
        n = int(_cycle(cfg.subjects_per_site, k))
        pop = simulate_site_population(cfg, snps, k, n, thresholds, prs_moments, pop_rng)
        calls = plant_missingness(cfg, snps, pop, qc, qc_rng)
        variants, site_calls, notes = _site_array(cfg, snps, calls, k, array_rng)
        sdir = site_dir(out, k)
        write_plink(sdir / "genotypes", site_calls, variants, samples_for_fam(pop))
        site_arrays[sdir.name] = notes
        planted_samples[sdir.name] = [p for p, b in zip(pop.ptid, pop.bad_sample, strict=True) if b]
        exp = expected_qc(snps, calls, pop.dx, pop.sex, qc)
        exp["removed_samples"] = [pop.ptid[i] for i in exp.pop("removed_sample_idx")]
        expected[sdir.name] = exp
        pooled_calls.append(calls)
        pooled_dx.append(pop.dx)
        pooled_sex.append(pop.sex)

        pd.DataFrame(
            {
                "PTID": pop.ptid,
                "DX": [DX_NAMES[d] for d in pop.dx],
                "AGE": pop.age,
                "PTGENDER": np.where(pop.sex == 1, "Male", "Female"),
                "APGEN1": pop.apoe[:, 0],
                "APGEN2": pop.apoe[:, 1],
            }
        ).to_csv(sdir / "clinical.csv", index=False)

        anats, severity = _anatomy_params(cfg, pop, anat_rng)
        orientation = str(_cycle(cfg.site_orientation, k))
        (sdir / "mri").mkdir(parents=True, exist_ok=True)
        for i, ptid in enumerate(pop.ptid):
            a = anats[i]
            subjects.append(
                {
                    "site": sdir.name,
                    "PTID": ptid,
                    "DX": DX_NAMES[pop.dx[i]],
                    "AGE": float(pop.age[i]),
                    "sex": int(pop.sex[i]),
                    "APOE_e4": int(pop.e4[i]),
                    "prs_z": float(pop.prs_z[i]),
                    "genetic_liability": float(pop.genetic_liability[i]),
                    "liability": float(pop.liability[i]),
                    "severity": float(severity[i]),
                    "ventricle_dilation_mm": a.ventricle_mm,
                    "cortical_atrophy_mm": a.cortical_mm,
                    "mtl_gm_loss": a.mtl_loss,
                    "rotation_deg": json.dumps(a.rotation_deg),
                    "translation_mm": json.dumps(a.translation_mm),
                    "orientation": orientation,
                    "qc_bad_sample": bool(pop.bad_sample[i]),
                }
            )
            jobs.append(
                (
                    ptid,
                    a,
                    shape,
                    grid_affine,
                    orientation,
                    (seed, k, i, 7),
                    str(sdir / "mri" / f"{ptid}.nii.gz"),
                )
            )

    measures = _render_all(jobs, cfg.workers) if cfg.write_mri else {}
    if only is not None:
        for k in sorted(only):
            _dump(site_dir(out, k) / "site.json", {"seed": seed, "site": k, "config": config_dict})
        return site_dir(out, min(only)) / "site.json"
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    subj = pd.DataFrame(subjects)
    if measures:
        subj["true_ventricle_volume_mm3"] = [measures[p]["ventricle_volume_mm3"] for p in subj.PTID]
        subj["true_gm_volume_mm3"] = [measures[p]["gm_volume_mm3"] for p in subj.PTID]
    subj.to_csv(truth / "subjects.csv", index=False)
    _write_snp_truth(truth, snps)
    same_array = not cfg.no_apoe_sites
    if same_array:
        expected["pooled"] = expected_qc(
            snps,
            np.concatenate(pooled_calls, axis=1),
            np.concatenate(pooled_dx),
            np.concatenate(pooled_sex),
            qc,
        )
        all_ptid = [s["PTID"] for s in subjects]
        expected["pooled"]["removed_samples"] = [
            all_ptid[i] for i in expected["pooled"].pop("removed_sample_idx")
        ]
    expected["thresholds"] = asdict(qc)
    _dump(truth / "qc_expected.json", expected)
    _dump(
        truth / "qc_planted.json",
        {
            "snps": {
                c: [s for s, cc in zip(snps.ids, snps.category, strict=True) if cc == c]
                for c in ("high_missing", "hwe", "rare", "monomorphic")
            },
            "filter_of_category": {
                "high_missing": "geno",
                "hwe": "hwe",
                "rare": "maf",
                "monomorphic": "maf",
            },
            "samples": planted_samples,
        },
    )
    _dump(truth / "site_arrays.json", site_arrays)
    if cfg.write_mri:
        fields = anatomy.load_template_fields()
        dil = np.round(np.arange(-1.0, 5.01, 0.25), 2)
        pd.DataFrame(
            {
                "dilation_mm": dil,
                "ventricle_volume_mm3": anatomy.ventricle_volume_curve(fields, dil),
            }
        ).to_csv(truth / "ventricle_curve.csv", index=False)
    _dump(
        truth / "effects.json",
        {
            "dx_thresholds": thresholds,
            "prs_mean_sd": prs_moments,
            "liability": "effect_e4*e4 + effect_prs*prs_z + effect_age*(AGE-73.5)/7 + N(0,1) "
            "+ site_shift; DX = CN / MCI / AD by dx_thresholds",
            "severity": "atrophy_genetic*genetic_liability + atrophy_age*(AGE-73.5)/7 + "
            "atrophy_dx[DX] + N(0, atrophy_noise_sd)",
            "ventricle_dilation_mm": "clip(ventricle_mm_per_severity*severity, -1, 5)",
            "cortical_atrophy_mm": "clip(cortical_mm_per_severity*(severity+1), 0, 2.5)",
            "mtl_gm_loss": "clip(mtl_loss_per_severity*(severity+1), 0, 0.7)",
            "ventricle_dilation_mm_per_e4_copy": cfg.ventricle_mm_per_severity
            * cfg.atrophy_genetic
            * cfg.effect_e4,
            "config": config_dict,
        },
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "config": config_dict,
        "versions": package_versions(("g2i-fed", "numpy", "nibabel", "nilearn", "scipy", "torch")),
        "sites": [site_dir(out, k).name for k in range(cfg.n_sites)],
        "voxel_grid": {"shape": list(shape), "affine_ras": grid_affine.tolist()},
        "fam_phenotype": {"CN": 1, "MCI": -9, "AD": 2},
    }
    _dump(manifest_path, manifest)
    return manifest_path


def _write_snp_truth(truth: Path, snps: SnpTable) -> None:
    pd.DataFrame(
        {
            "snp_id": snps.ids,
            "chrom": [v.chrom for v in snps.variants],
            "pos": [v.pos for v in snps.variants],
            "a1": [v.a1 for v in snps.variants],
            "a2": [v.a2 for v in snps.variants],
            "freq_a1": snps.freq_a1,
            "category": snps.category,
            "risk_allele": [
                (v.a1 if r else v.a2) if c == "panel" else ""
                for v, r, c in zip(snps.variants, snps.risk_is_a1, snps.category, strict=True)
            ],
            "prs_weight": snps.prs_weight,
        }
    ).to_csv(truth / "snps.tsv", sep="\t", index=False)


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
