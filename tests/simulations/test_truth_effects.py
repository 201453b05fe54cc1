"""The true e4 effect on ventricle area and the slice measurement, on template renders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from conf.schema import DataConfig
from g2i_eval.morphometry import (
    VENTRICLE_ROI_MM,
    VENTRICLE_SEED_MM,
    cortical_csf_fraction,
    pixel_mm_for,
    ventricle_area,
)
from simulations import anatomy
from simulations.truth_effects import (
    area_slope_at,
    attainable_e4_effect,
    render_template_slices,
    template_ventricle_area,
    true_ventricle_area_slope,
)

DILATIONS = [1.0, 2.0, 3.0, 4.0]
# The measurement sees ~0.86 of the true slope on these renders (see truth_effects).
SLOPE_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def fields() -> anatomy.TemplateFields:
    return anatomy.load_template_fields()  # ~5-10 s, once


@pytest.fixture(scope="module")
def renders(fields: anatomy.TemplateFields) -> np.ndarray:
    """(4, 64, 64) noise-free renders at DILATIONS through the data pipeline's slicing."""
    return render_template_slices(DILATIONS, DataConfig())[:, 0]


def test_measured_area_slope_matches_the_template_truth(renders: np.ndarray) -> None:
    area = ventricle_area(renders, pixel_mm_for(64)).numpy().astype(float)
    assert np.all(np.diff(area) > 0)
    truth = template_ventricle_area(DILATIONS, 18.0)
    assert np.all(np.diff(truth) > 0)
    measured_slope = np.polyfit(DILATIONS, area, 1)[0]
    true_slope = np.polyfit(DILATIONS, truth, 1)[0]
    assert measured_slope == pytest.approx(true_slope, rel=SLOPE_TOLERANCE)
    # Absolute areas agree too, within the partial-volume and grey-matter offsets.
    np.testing.assert_allclose(area, truth, rtol=0.2)


def test_cortical_proxy_rises_with_cortical_atrophy(fields: anatomy.TemplateFields) -> None:
    images = render_template_slices([0.0, 0.0, 0.0], DataConfig(), cortical_mm=[0.0, 1.25, 2.5])
    frac = cortical_csf_fraction(images[:, 0], pixel_mm_for(64)).numpy()
    assert np.all(np.diff(frac) > 0.005)


def test_ventricle_boxes_fit_the_template(fields: anatomy.TemplateFields) -> None:
    # The measurement's boxes hold the template's ventricles dilated by 5 mm at z = 16..20
    # mm, and the seed box reaches into the undilated ones.
    inv = np.linalg.inv(fields.affine)
    for z in (16.0, 18.0, 20.0):
        k = int(round((inv @ [0.0, 0.0, z, 1.0])[2]))
        plane = fields.ventricle_sd[:, :, k]
        ii, jj = np.nonzero(plane < 5.0)
        world = fields.affine[:2, :2] @ np.stack([ii, jj]) + fields.affine[:2, 3:4]
        (x0, x1), (y0, y1) = VENTRICLE_ROI_MM
        assert x0 < world[0].min() and world[0].max() < x1
        assert y0 < world[1].min() and world[1].max() < y1
        labels, n = ndimage.label(plane < 0)
        ii, jj = np.nonzero(plane < 0)
        world = fields.affine[:2, :2] @ np.stack([ii, jj]) + fields.affine[:2, 3:4]
        (x0, x1), (y0, y1) = VENTRICLE_SEED_MM
        in_seed = (world[0] > x0) & (world[0] < x1) & (world[1] > y0) & (world[1] < y1)
        assert set(labels[ii[in_seed], jj[in_seed]]) == set(range(1, n + 1))


def test_slope_from_a_truth_folder(tmp_path: Path, fields: anatomy.TemplateFields) -> None:
    (tmp_path / "effects.json").write_text(
        json.dumps(
            {"ventricle_dilation_mm_per_e4_copy": 0.5, "config": {"jitter_translation_mm": 2.0}}
        )
    )
    pd.DataFrame(
        {"APOE_e4": [0, 0, 1, 1, 2, 2], "ventricle_dilation_mm": [0.5, 1.5, 1.5, 2.5, 2.5, 3.5]}
    ).to_csv(tmp_path / "subjects.csv", index=False)
    out = true_ventricle_area_slope(tmp_path, DataConfig(), calibrate=False)
    assert out["mean_dilation_mm"] == pytest.approx(2.0)
    assert out["observed_dilation_mm_per_copy"] == pytest.approx(1.0)
    slope = area_slope_at(2.0, 18.0, 1.0, 2.0, fields=fields)
    assert out["area_slope_mm2_per_mm"] == pytest.approx(slope)
    assert out["slope_mm2_per_copy"] == pytest.approx(0.5 * slope)
    assert out["observed_slope_mm2_per_copy"] == pytest.approx(slope)
    # Of the order of the ventricles' perimeter at the slice (a few hundred mm).
    assert 150.0 < slope < 700.0
    assert "calibration" not in out


def test_missing_truth_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="effects.json"):
        true_ventricle_area_slope(tmp_path, DataConfig())


def _effects(**config) -> dict:
    """An effects.json as g2i-simulate writes it, for the paper cohort's formulas."""
    from dataclasses import asdict

    from conf.schema import CohortConfig

    cfg = {**asdict(CohortConfig()), "subjects_per_site": [300, 351, 260], **config}
    per_copy = cfg["ventricle_mm_per_severity"] * cfg["atrophy_genetic"] * cfg["effect_e4"]
    return {
        "config": cfg,
        "dx_thresholds": [-0.32, 1.25],
        "ventricle_dilation_mm_per_e4_copy": per_copy,
    }


def test_attainable_e4_effect_is_the_direct_one_without_a_collider_path() -> None:
    """With no age effect on either liability or atrophy, nothing but e4 and the PRS links e4
    to the atrophy of subjects of one diagnosis: the conditional slope is the direct effect.
    With the cohort's age effects it is below it, above the within-diagnosis slope that
    ignores the PRS, and the pooled slope (through the diagnosis) is far above."""
    plain = attainable_e4_effect(_effects(effect_age=0.0, atrophy_age=0.0), n=400_000)
    assert plain["ratio_at_fixed_dx"] == pytest.approx(1.0, abs=0.02)
    real = attainable_e4_effect(_effects(), n=400_000)
    assert 0.6 < real["ratio_at_fixed_dx"] < 0.95
    assert real["ratio_within_dx"] < real["ratio_at_fixed_dx"] - 0.02
    assert real["ratio_total"] > 1.3
    again = attainable_e4_effect(_effects(), n=400_000, seed=1)
    assert again["ratio_at_fixed_dx"] == pytest.approx(real["ratio_at_fixed_dx"], abs=0.02)


def test_attainable_e4_effect_matches_the_cohort_generator(tmp_path: Path) -> None:
    """The closed-form draw agrees with the cohort generator's own subjects: the slope fitted
    on a generated cohort's truth table (dilation on e4 + PRS + diagnosis) falls within
    sampling error of ``ratio_at_fixed_dx``."""
    from simulations.cohort import simulate_cohort
    from tests.conftest import small_cohort_config

    cfg = small_cohort_config(write_mri=False, subjects_per_site=[1500])
    simulate_cohort(cfg, tmp_path, seed=3)
    effects = json.loads((tmp_path / "truth" / "effects.json").read_text())
    subjects = pd.read_csv(tmp_path / "truth" / "subjects.csv")
    dx = subjects["DX"].map({"CN": 0, "MCI": 1, "AD": 2}).to_numpy()
    x = np.column_stack(
        [subjects["APOE_e4"], subjects["prs_z"], *[(dx == k).astype(float) for k in range(3)]]
    )
    fit = np.linalg.lstsq(x, subjects["ventricle_dilation_mm"].to_numpy(), rcond=None)[0][0]
    ratio = fit / effects["ventricle_dilation_mm_per_e4_copy"]
    assert ratio == pytest.approx(attainable_e4_effect(effects)["ratio_at_fixed_dx"], abs=0.12)
