"""Slice morphometry on hand-made MNI-canvas phantoms with known areas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from g2i_eval.morphometry import (
    MorphometryError,
    cortical_csf_fraction,
    measure,
    pixel_mm_for,
    ventricle_area,
)
from preprocessing.imaging import CANVAS_X_MM, CANVAS_Y_MM

WM, GM, CSF = 0.9, 0.6, 0.12


def phantom(
    size: int = 64,
    ventricle_mm: tuple[float, float] = (12.0, 20.0),
    outer_csf_mm: float = 0.0,
    supersample: int = 8,
) -> np.ndarray:
    """(size, size) canvas: an elliptic brain (WM, a GM rim) holding one elliptic ventricle
    centred at (x, y) = (0, -15) mm with semi-axes ``ventricle_mm``; the brain's outer
    2 mm plus ``outer_csf_mm`` (subarachnoid space plus cortical loss) are CSF. Pixels are
    area averages (partial volume)."""
    n = size * supersample
    step = (CANVAS_X_MM[1] - CANVAS_X_MM[0]) / (size - 1)
    xs = CANVAS_X_MM[0] - step / 2 + (np.arange(n) + 0.5) * step / supersample
    ys = CANVAS_Y_MM[0] + step / 2 - (np.arange(n) + 0.5) * step / supersample
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    r_brain = np.sqrt((xx / 70.0) ** 2 + ((yy + 17.0) / 90.0) ** 2)
    x = np.where(r_brain <= 1.0, WM, 0.0)
    x = np.where((r_brain <= 1.0) & (r_brain > 0.9), GM, x)
    x = np.where((r_brain <= 1.0) & (r_brain > 1.0 - (2.0 + outer_csf_mm) / 70.0), CSF, x)
    a, b = ventricle_mm
    x = np.where((xx / a) ** 2 + ((yy + 15.0) / b) ** 2 <= 1.0, CSF, x)
    return x.reshape(size, supersample, size, supersample).mean(axis=(1, 3)).astype(np.float32)


def test_pixel_mm_follows_the_canvas() -> None:
    assert pixel_mm_for(64) == pytest.approx(217.0 / 63)
    assert pixel_mm_for(218) == pytest.approx(1.0)


def test_area_of_a_known_ventricle_and_its_growth() -> None:
    sizes = [(8.0, 14.0), (10.0, 17.0), (12.0, 20.0), (14.0, 23.0), (16.0, 26.0)]
    images = np.stack([phantom(ventricle_mm=s) for s in sizes])[:, None]
    area = ventricle_area(torch.from_numpy(images), pixel_mm_for(64)).numpy()
    truth = np.array([np.pi * a * b for a, b in sizes])
    assert area.shape == (5,)
    assert np.all(np.diff(area) > 0)
    # The tissue end of the ramp (0.7 x WM) sits below pure WM, so the partial-volume rim
    # of a CSF/WM border counts a little short: areas low by up to ~half a pixel's rim.
    np.testing.assert_allclose(area, truth, rtol=0.15)
    assert np.all(area < truth)
    slope = np.polyfit(truth, area, 1)[0]
    assert slope == pytest.approx(1.0, abs=0.1)


def test_area_is_smooth_under_subpixel_growth() -> None:
    # 0.25 mm steps are far below the 3.4 mm pixel: every step must still add area.
    semi = np.arange(12.0, 14.01, 0.25)
    images = np.stack([phantom(ventricle_mm=(a, a * 5 / 3)) for a in semi])
    area = ventricle_area(images, pixel_mm_for(64)).numpy()
    assert np.all(np.diff(area) > 0)
    steps = np.diff(area) / np.diff(np.pi * semi * semi * 5 / 3)
    assert steps.min() > 0.3 and steps.max() < 2.0


def test_area_ignores_contrast_scaling_and_image_size() -> None:
    x = phantom()
    base = float(ventricle_area(x[None], pixel_mm_for(64))[0])
    assert float(ventricle_area(0.7 * x[None], pixel_mm_for(64))[0]) == pytest.approx(base)
    big = float(ventricle_area(phantom(size=128)[None], pixel_mm_for(128))[0])
    assert big == pytest.approx(base, rel=0.08)


def test_csf_away_from_the_ventricles_is_not_counted() -> None:
    x = phantom()
    base = float(ventricle_area(x[None], pixel_mm_for(64))[0])
    y = x.copy()
    y[10:14, 28:36] = CSF  # anterior, outside the ventricle region
    y[19:22, 40:42] = CSF  # inside the region but not connected to the ventricle
    assert float(ventricle_area(y[None], pixel_mm_for(64))[0]) == pytest.approx(base)
    loose = float(ventricle_area(y[None], pixel_mm_for(64), connected=False)[0])
    assert loose > base


def test_blank_images_measure_zero() -> None:
    m = measure(np.zeros((2, 1, 64, 64), np.float32), pixel_mm_for(64))
    assert torch.equal(m["ventricle_area_mm2"], torch.zeros(2))
    assert torch.equal(m["cortical_csf_fraction"], torch.zeros(2))


def test_cortical_fraction_rises_with_outer_csf() -> None:
    images = np.stack([phantom(outer_csf_mm=w) for w in (0.0, 1.0, 2.0, 3.0)])
    frac = cortical_csf_fraction(images, pixel_mm_for(64)).numpy()
    assert np.all(np.diff(frac) > 0)
    assert 0.0 <= frac.min() and frac.max() <= 1.0


def test_bad_inputs_raise() -> None:
    x = phantom()[None]
    with pytest.raises(MorphometryError, match="pixel_mm"):
        ventricle_area(x, 1.0)
    with pytest.raises(MorphometryError, match="shape"):
        ventricle_area(np.zeros((2, 3, 64, 64)), pixel_mm_for(64))
    with pytest.raises(MorphometryError, match="NaN"):
        ventricle_area(np.full((1, 64, 64), np.nan), pixel_mm_for(64))
