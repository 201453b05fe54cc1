"""The true effect of one APOE e4 copy on the ventricle area of the training slice.

The cohort writes the effect on the anatomy (``effects.json``: ventricle dilation in mm per
e4 copy); what an image model can show is its effect on the ventricle area of one axial
slice. This module turns one into the other with the template the cohort was rendered from:

    true slope (mm^2 per copy) = dilation per copy (mm) x dA/dd (mm^2 per mm)

where ``A(d)`` is the partial-volume area of the template's lateral ventricles dilated by
``d`` mm in the slice plane, i.e. the integral over the plane of the same occupancy ramp
the renderer uses (``ramp(d - ventricle_sd)`` times the brain mask), with the signed
distance field trilinearly interpolated on a 0.5 mm in-plane grid. The derivative is a
central difference over ``mean dilation +- halfwidth_mm`` (default 1 mm: the template's
distance field is a 1 mm Euclidean transform, so finer differences pick up its steps), and
it is averaged over planes spread uniformly across ``slice_z_mm +- jitter_translation_mm``,
because every subject's slice shows the template through a small rigid misregistration.

It is a first-order (local) answer: dilation is clipped to [-1, 5] mm and ``A`` is not
linear in ``d``, so an effect measured far from the cohort's mean dilation differs.

Two more numbers help judge a measured slope:

- ``observed``: the OLS slope of the subjects' true dilation on their e4 count, times the
  same dA/dd. It includes the path e4 -> diagnosis -> atrophy, so a regression of a measured
  area on e4 in real images estimates this total effect, not the direct one.
- ``calibration``: noise-free renders of the template at several dilations, run through the
  data pipeline's normalisation and slice extraction and measured with
  ``g2i_eval.morphometry.ventricle_area``; the ratio of its slope to the template's
  ``A(d)`` slope over the same dilations says how much of a true area change the
  measurement sees (below 1: partial-volume rim and grey matter next to the ventricles).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from conf.schema import DataConfig
from preprocessing.imaging import SliceSpec, axial_slices, normalize_intensity
from simulations import anatomy

# In-plane window (MNI mm) that holds the ventricles dilated by 5 mm at z = 10..26 mm.
_PLANE_X_MM = (-60.0, 60.0)
_PLANE_Y_MM = (-80.0, 50.0)


def _ramp(x: np.ndarray) -> np.ndarray:
    # The renderer's partial-volume ramp (kept equal to simulations.anatomy._ramp).
    return np.clip(0.5 + x / anatomy._RAMP_MM, 0.0, 1.0)


def template_ventricle_area(
    dilations_mm: np.ndarray | list[float],
    z_mm: float,
    fields: anatomy.TemplateFields | None = None,
    step_mm: float = 0.5,
) -> np.ndarray:
    """Partial-volume area (mm^2) of the template's ventricles, dilated by each of
    ``dilations_mm`` (n,), in the axial plane at ``z_mm``. Returns (n,) float64."""
    fields = anatomy.load_template_fields() if fields is None else fields
    xs = np.arange(*_PLANE_X_MM, step_mm) + step_mm / 2
    ys = np.arange(*_PLANE_Y_MM, step_mm) + step_mm / 2
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    world = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, z_mm), np.ones(xx.size)])
    vox = (np.linalg.inv(fields.affine) @ world)[:3]
    vsd = ndimage.map_coordinates(fields.ventricle_sd, vox, order=1, mode="nearest")
    brain = ndimage.map_coordinates(fields.brain, vox, order=1, mode="constant")
    d = np.asarray(dilations_mm, dtype=np.float64)
    return np.array([(_ramp(di - vsd) * brain).sum() * step_mm**2 for di in d])


def area_slope_at(
    dilation_mm: float,
    z_mm: float,
    halfwidth_mm: float = 1.0,
    z_jitter_mm: float = 0.0,
    n_planes: int = 5,
    fields: anatomy.TemplateFields | None = None,
) -> float:
    """dA/dd (mm^2 per mm) at ``dilation_mm``: a central difference over +- ``halfwidth_mm``,
    averaged over ``n_planes`` planes spread uniformly over ``z_mm +- z_jitter_mm``."""
    planes = np.linspace(z_mm - z_jitter_mm, z_mm + z_jitter_mm, n_planes if z_jitter_mm else 1)
    d = [dilation_mm - halfwidth_mm, dilation_mm + halfwidth_mm]
    slopes = [np.diff(template_ventricle_area(d, float(z), fields))[0] for z in planes]
    return float(np.mean(slopes) / (2 * halfwidth_mm))


def render_template_slices(
    dilations_mm: list[float],
    data_cfg: DataConfig,
    cortical_mm: list[float] | float = 0.0,
    voxel_size_mm: float = 2.0,
) -> np.ndarray:
    """Noise-free template renders at each dilation (and cortical atrophy), through the data
    pipeline's int16 storage, intensity normalisation and slice extraction.

    Returns:
        (n, n_slices, S, S) float32 in [0, 1], one per dilation.
    """
    fields = anatomy.load_template_fields()
    stack = fields.stacked()
    shape, affine = anatomy.output_grid(voxel_size_mm, fields)
    spec = SliceSpec(
        z_mm=data_cfg.slice_z_mm,
        n_slices=data_cfg.n_slices,
        spacing_mm=data_cfg.slice_spacing_mm,
        image_size=data_cfg.image_size,
    )
    cort = np.broadcast_to(np.asarray(cortical_mm, dtype=float), (len(dilations_mm),))
    out = []
    for d, c in zip(dilations_mm, cort, strict=True):
        anat = anatomy.SubjectAnatomy(
            ventricle_mm=float(d),
            cortical_mm=float(c),
            mtl_loss=0.0,
            rotation_deg=(0.0, 0.0, 0.0),
            translation_mm=(0.0, 0.0, 0.0),
            bias_coeffs=(0.0,) * 9,
            gamma=1.0,
            scale=1000.0,
            noise_sd=0.0,
        )
        volume, _ = anatomy.render_subject(
            anat, shape, affine, fields, np.random.default_rng(0), stack
        )
        volume = np.rint(volume).astype(np.float32)  # the cohort stores int16
        x = normalize_intensity(
            volume, data_cfg.normalization, tuple(data_cfg.intensity_percentiles)
        )
        out.append(axial_slices(nib.Nifti1Image(volume, affine), x, spec))
    return np.stack(out)


def attainable_e4_effect(effects: dict[str, Any], n: int = 2_000_000, seed: int = 0) -> dict:
    """The e4 effect on ventricle dilation that a perfect generator conditioned on the
    diagnosis and the genotype would show, as a share of the direct effect.

    A generator varies e4 at a fixed diagnosis (and fixed other SNPs). In the cohort the
    diagnosis is a collider: it is cut from a liability that e4, the PRS, age and noise all
    raise, and age also drives atrophy, so among subjects of one diagnosis the e4 carriers
    are on average younger, which shrinks their ventricles again. The exact conditional
    slope E[dilation | e4, PRS, DX] per copy is therefore below the direct effect. It is
    computed here by drawing ``n`` subjects from the cohort's own formulas (``effects.json``:
    APOE alleles, PRS ~ N(0, 1), age, site shifts by site size, diagnosis thresholds,
    severity, clipped dilation) and fitting dilation on e4 with the PRS and a free intercept
    per diagnosis. Returns ``ratio_at_fixed_dx`` (that slope over the direct effect: what an
    ideal model's e4 ratio vs truth is), ``ratio_within_dx`` (without the PRS: the real
    images' within-diagnosis slope estimates this) and ``ratio_total`` (no diagnosis: the
    pooled slope, e4 -> diagnosis -> atrophy included), each with the slope in mm per copy.
    """
    c = effects["config"]
    rng = np.random.default_rng(seed)
    n_sites = int(c["n_sites"])
    sizes = np.resize(np.asarray(c["subjects_per_site"], float), n_sites)
    site = rng.choice(n_sites, size=n, p=sizes / sizes.sum())
    shift = np.resize(np.asarray(c["site_liability_shift"], float), n_sites)[site]
    e4 = (rng.choice(3, size=(n, 2), p=np.asarray(c["apoe_freqs"], float)) == 2).sum(axis=1)
    prs = rng.normal(0.0, 1.0, n)
    age_z = (np.clip(rng.normal(73.5, 7.0, n), 55.0, 92.0) - 73.5) / 7.0
    genetic = c["effect_e4"] * e4 + c["effect_prs"] * prs
    liability = genetic + c["effect_age"] * age_z + rng.normal(0.0, 1.0, n) + shift
    dx = np.searchsorted(np.asarray(effects["dx_thresholds"], float), liability)
    severity = (
        c["atrophy_genetic"] * genetic
        + c["atrophy_age"] * age_z
        + np.asarray(c["atrophy_dx"], float)[dx]
        + rng.normal(0.0, c["atrophy_noise_sd"], n)
    )
    dilation = np.clip(c["ventricle_mm_per_severity"] * severity, -1.0, 5.0)
    direct = float(effects["ventricle_dilation_mm_per_e4_copy"])
    dummies = [(dx == k).astype(float) for k in range(3) if (dx == k).any()]

    def slope(columns: list[np.ndarray]) -> float:
        x = np.column_stack([e4.astype(float), *columns])
        return float(np.linalg.lstsq(x, dilation, rcond=None)[0][0])

    fits = {
        "at_fixed_dx": slope([*dummies, prs]),
        "within_dx": slope(dummies),
        "total": slope([np.ones(n)]),
    }
    out: dict[str, Any] = {"n": n, "direct_mm_per_copy": direct}
    for name, value in fits.items():
        out[f"mm_per_copy_{name}"] = value
        out[f"ratio_{name}"] = value / direct
    return out


def true_ventricle_area_slope(
    truth_dir: str | Path,
    data_cfg: DataConfig,
    halfwidth_mm: float = 1.0,
    calibration_dilations_mm: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0),
    calibrate: bool = True,
) -> dict[str, Any]:
    """The true e4 effect on ventricle area at the slice, from a cohort's truth folder.

    Returns a dict with
        ``slope_mm2_per_copy``: direct effect, dilation per copy x dA/dd;
        ``dilation_mm_per_copy``, ``area_slope_mm2_per_mm`` (dA/dd, misregistration-averaged),
        ``area_slope_exact_plane`` (dA/dd in the exact plane), ``mean_dilation_mm``,
        ``slice_z_mm``, ``z_jitter_mm``, ``halfwidth_mm``;
        ``observed_dilation_mm_per_copy`` and ``observed_slope_mm2_per_copy`` (total effect
        in this cohort's subjects, see the module docstring);
        ``attainable``: ``attainable_e4_effect`` (what a perfect generator's e4 ratio is);
        with ``calibrate``: ``calibration`` = {dilations_mm, template_area_mm2,
        measured_area_mm2, template_slope, measured_slope, ratio}.
    """
    truth_dir = Path(truth_dir)
    effects_path = truth_dir / "effects.json"
    subjects_path = truth_dir / "subjects.csv"
    for p in (effects_path, subjects_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: not a cohort truth folder (run g2i-simulate)")
    effects = json.loads(effects_path.read_text())
    per_copy = float(effects["ventricle_dilation_mm_per_e4_copy"])
    z_jitter = float(effects["config"].get("jitter_translation_mm", 0.0))
    subjects = pd.read_csv(subjects_path)
    mean_dil = float(subjects["ventricle_dilation_mm"].mean())
    fields = anatomy.load_template_fields()
    z = float(data_cfg.slice_z_mm)
    slope = area_slope_at(mean_dil, z, halfwidth_mm, z_jitter, fields=fields)
    exact = area_slope_at(mean_dil, z, halfwidth_mm, 0.0, fields=fields)
    e4 = subjects["APOE_e4"].to_numpy(float)
    observed = float(np.polyfit(e4, subjects["ventricle_dilation_mm"].to_numpy(float), 1)[0])
    out: dict[str, Any] = {
        "slope_mm2_per_copy": per_copy * slope,
        "dilation_mm_per_copy": per_copy,
        "area_slope_mm2_per_mm": slope,
        "area_slope_exact_plane": exact,
        "mean_dilation_mm": mean_dil,
        "slice_z_mm": z,
        "z_jitter_mm": z_jitter,
        "halfwidth_mm": halfwidth_mm,
        "observed_dilation_mm_per_copy": observed,
        "observed_slope_mm2_per_copy": observed * slope,
        # a cohort's effects.json holds the formulas' inputs (older or hand-written ones may not)
        "attainable": attainable_e4_effect(effects) if "dx_thresholds" in effects else None,
    }
    if calibrate:
        out["calibration"] = measurement_calibration(list(calibration_dilations_mm), data_cfg)
    return out


def measurement_calibration(dilations_mm: list[float], data_cfg: DataConfig) -> dict[str, Any]:
    """``ventricle_area`` on noise-free renders vs the template's partial-volume area, both
    at ``dilations_mm`` in the exact slice plane; slopes are OLS over the dilations."""
    from g2i_eval.morphometry import pixel_mm_for, ventricle_area

    images = render_template_slices(dilations_mm, data_cfg)
    centre = images[:, images.shape[1] // 2]
    measured = ventricle_area(centre, pixel_mm_for(data_cfg.image_size)).numpy().astype(float)
    template = template_ventricle_area(dilations_mm, float(data_cfg.slice_z_mm))
    d = np.asarray(dilations_mm, dtype=float)
    t_slope = float(np.polyfit(d, template, 1)[0])
    m_slope = float(np.polyfit(d, measured, 1)[0])
    return {
        "dilations_mm": d.tolist(),
        "template_area_mm2": template.tolist(),
        "measured_area_mm2": measured.tolist(),
        "template_slope": t_slope,
        "measured_slope": m_slope,
        "ratio": m_slope / t_slope,
    }
