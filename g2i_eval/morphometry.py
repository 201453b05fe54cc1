"""Ventricle area and a cortical-atrophy proxy measured on axial MNI slices.

What is measured
----------------
Images are the canvas slices of ``preprocessing.imaging``: (B, 1, S, S) or (B, S, S) in
[0, 1], an axial plane of an MNI152-registered T1 (default z = 18 mm, through the bodies of
the lateral ventricles), rows from y = +91 mm (top) to y = -126 mm, columns from
x = -108.5 mm to +108.5 mm, pixel centres ``pixel_mm = 217 / (S - 1)`` mm apart. Every region
below is given in MNI millimetres and turned into pixels from that convention, so the same
measurement runs at any image size.

``ventricle_area`` (mm^2): the lateral-ventricle cross-section.

1. Reference intensity ``wm``: the ``wm_percentile`` percentile of the pixels in a central
   box that lies inside the brain at this level (``REFERENCE_BOX_MM``). In a T1 the bright
   end of that box is white matter, so thresholds scale with each image's own contrast
   (site gamma, scaling, a generator's brightness drift) rather than with fixed numbers.
2. Soft CSF fraction per pixel by linear partial-volume unmixing between CSF and white
   matter: ``f = clip((tissue_frac * wm - x) / ((tissue_frac - csf_frac) * wm), 0, 1)``.
   A pixel half CSF and half white matter gets about 1/2, so the area moves smoothly as the
   ventricle border moves through a pixel instead of jumping by whole pixels.
3. The ventricles: connected components of ``f >= 0.5`` inside ``VENTRICLE_ROI_MM`` that
   reach into ``VENTRICLE_SEED_MM``, grown by ``rim_mm`` to take in their partial-volume
   rim. ``VENTRICLE_SEED_MM`` lies within the MNI152 template's lateral ventricles at
   z = 16..20 mm; ``VENTRICLE_ROI_MM`` holds them dilated by 5 mm (the cohort's largest
   dilation) at z = 16..20 mm, plus 4-6 mm for misregistration.
4. Area = sum of ``f`` over those pixels times ``pixel_mm ** 2``.

``cortical_csf_fraction`` (unitless, 0..1): the mean soft CSF fraction in an outer band of
the brain, ``band_mm`` deep. Cortical atrophy widens sulci and thins the cortical ribbon; in
a skull-stripped slice that turns the outer band's grey matter into CSF, so the fraction
rises with atrophy. The brain mask is the filled region brighter than ``brain_frac * wm``
(CSF is brighter than the stripped background); the soft fraction here unmixes CSF against
grey matter (``gm_frac``), the tissue that borders the outer CSF.

Known limits
------------
- It assumes MNI-registered, skull-stripped slices at about z = 18 mm. Other levels or
  unregistered images put the regions on the wrong anatomy.
- Grey matter next to the ventricles (the caudate heads) is darker than white matter; with
  the defaults it counts as tissue, but a darker-than-usual grey matter (contrast, bias
  field) adds a partial CSF fraction, and a ventricle growing into tissue that already
  looks partly CSF (the template's own blurred ventricle border) adds less than its true
  area. On noise-free template renders the measured slope is about 0.86 of the true
  partial-volume slope over 1..4 mm of dilation (``simulations.truth_effects``). Effects (slopes)
  are therefore best compared with a truth measured the same way or calibrated on renders
  (see ``simulations.truth_effects``).
- The tissue end of the unmixing ramp (``tissue_frac`` = 0.7 of the white-matter
  reference) lies below pure white matter so that grey matter counts as tissue; the
  partial-volume rim at a CSF/white-matter border is therefore counted a little short, and
  the absolute area is low by a fraction of a pixel times the perimeter (5-10 % for
  template-sized ventricles at 64 pixels). Differences between ventricle sizes are
  unaffected to first order: a border that moves carries its rim profile along.
- At 64 pixels (3.4 mm) the septum and thin horns are partial-volume blurred; the two
  ventricles often form one component, which is harmless here.
- Components are hard decisions: a CSF island joining or leaving the seed-connected set
  changes the area by its whole size. With the default margins this happens only for
  ventricles far outside the cohort's range.
- Images with no bright tissue in the reference box (blank or failed generations) give
  area 0 and fraction 0 rather than an error, so a batch of bad samples shows up as a flat
  measurement, not a crash.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from preprocessing.imaging import CANVAS_X_MM, CANVAS_Y_MM

# Boxes as ((x_min, x_max), (y_min, y_max)) in MNI mm at the default slice (z = 18 mm).
VENTRICLE_ROI_MM = ((-40.0, 40.0), (-62.0, 32.0))
VENTRICLE_SEED_MM = ((-22.0, 22.0), (-40.0, 10.0))
# Inside the brain at z = 16..20 mm, ventricles included: its bright end is white matter.
REFERENCE_BOX_MM = ((-45.0, 45.0), (-70.0, 40.0))
# Smallest meaningful reference intensity: below it the image has no tissue to measure.
_MIN_REFERENCE = 1e-3


class MorphometryError(ValueError):
    """Images or parameters that the slice measurements cannot use."""


def pixel_mm_for(image_size: int) -> float:
    """Distance (mm) between pixel centres on the MNI canvas at ``image_size`` pixels."""
    if image_size < 2:
        raise MorphometryError(f"image_size must be >= 2, got {image_size}")
    return (CANVAS_X_MM[1] - CANVAS_X_MM[0]) / (image_size - 1)


def _as_batch(images: torch.Tensor | np.ndarray, pixel_mm: float) -> np.ndarray:
    """(B, 1, S, S) or (B, S, S) -> (B, S, S) float64, checked against the canvas."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise MorphometryError(
            f"expected images (B, 1, S, S) or (B, S, S), got shape {tuple(x.shape)}"
        )
    expected = pixel_mm_for(x.shape[-1])
    if not np.isclose(pixel_mm, expected, rtol=0.01):
        raise MorphometryError(
            f"pixel_mm={pixel_mm:g} does not match the {x.shape[-1]}-pixel MNI canvas "
            f"({expected:.4g} mm); use pixel_mm_for(image_size)"
        )
    if not np.all(np.isfinite(x)):
        raise MorphometryError("images contain NaN or infinite values")
    return x.astype(np.float64)


def box_mask(size: int, box_mm: tuple[tuple[float, float], tuple[float, float]]) -> np.ndarray:
    """(size, size) bool: canvas pixels whose centres lie in ``box_mm`` ((x0, x1), (y0, y1))."""
    xs = np.linspace(CANVAS_X_MM[0], CANVAS_X_MM[1], size)
    ys = np.linspace(CANVAS_Y_MM[0], CANVAS_Y_MM[1], size)
    (x0, x1), (y0, y1) = box_mm
    in_x = (xs >= x0) & (xs <= x1)
    in_y = (ys >= y0) & (ys <= y1)
    return in_y[:, None] & in_x[None, :]


def reference_intensity(x: np.ndarray, wm_percentile: float = 90.0) -> np.ndarray:
    """White-matter reference per image: (B, S, S) -> (B,), a percentile of the central box."""
    box = box_mask(x.shape[-1], REFERENCE_BOX_MM)
    if not box.any():
        raise MorphometryError(f"image size {x.shape[-1]} leaves no pixel in the reference box")
    return np.percentile(x[:, box], wm_percentile, axis=1)


def soft_csf_fraction(
    x: np.ndarray, reference: np.ndarray, csf_frac: float, tissue_frac: float
) -> np.ndarray:
    """Partial-volume CSF fraction (B, S, S) in [0, 1] between CSF and a tissue level.

    ``csf_frac * reference`` and darker counts as pure CSF, ``tissue_frac * reference`` and
    brighter as pure tissue, linear between (a mixture's intensity is the mixture of the two).
    """
    if not 0.0 <= csf_frac < tissue_frac:
        raise MorphometryError(
            f"need 0 <= csf_frac < tissue_frac, got csf_frac={csf_frac}, tissue={tissue_frac}"
        )
    ref = reference[:, None, None]
    f = (tissue_frac * ref - x) / np.maximum((tissue_frac - csf_frac) * ref, _MIN_REFERENCE)
    return np.where(ref > _MIN_REFERENCE, np.clip(f, 0.0, 1.0), 0.0)


def ventricle_area(
    images: torch.Tensor | np.ndarray,
    pixel_mm: float,
    *,
    wm_percentile: float = 90.0,
    csf_frac: float = 0.2,
    tissue_frac: float = 0.7,
    rim_mm: float = 3.5,
    connected: bool = True,
) -> torch.Tensor:
    """Lateral-ventricle area (B,) in mm^2 on axial MNI slices (see the module docstring).

    Args:
        images: (B, 1, S, S) or (B, S, S) in [0, 1] on the MNI canvas.
        pixel_mm: pixel spacing, ``pixel_mm_for(S)``.
        wm_percentile: percentile of the central box taken as the white-matter intensity.
        csf_frac: intensity (fraction of the reference) at and below which a pixel is CSF.
        tissue_frac: intensity (fraction of the reference) at and above which it is tissue.
        rim_mm: how far the seed-connected components are grown to take in their
            partial-volume rim.
        connected: keep only CSF connected to the seed box (False: every soft CSF pixel in
            the ROI counts, which lets sulcal CSF and noise in).

    Returns:
        (B,) float32 tensor of areas in mm^2.
    """
    x = _as_batch(images, pixel_mm)
    size = x.shape[-1]
    ref = reference_intensity(x, wm_percentile)
    f = soft_csf_fraction(x, ref, csf_frac, tissue_frac)
    roi = box_mask(size, VENTRICLE_ROI_MM)
    seed = box_mask(size, VENTRICLE_SEED_MM)
    grow = max(0, int(round(rim_mm / pixel_mm)))
    areas = np.zeros(x.shape[0])
    for i in range(x.shape[0]):
        fi = f[i] * roi
        if connected:
            labels, _ = ndimage.label(fi >= 0.5)
            keep_ids = np.unique(labels[seed & (labels > 0)])
            keep = np.isin(labels, keep_ids) & (labels > 0)
            if grow and keep.any():
                keep = ndimage.binary_dilation(keep, iterations=grow)
            fi = fi * keep
        areas[i] = fi.sum() * pixel_mm**2
    return torch.from_numpy(areas.astype(np.float32))


def cortical_csf_fraction(
    images: torch.Tensor | np.ndarray,
    pixel_mm: float,
    *,
    band_mm: float = 4.0,
    wm_percentile: float = 90.0,
    brain_frac: float = 0.08,
    csf_frac: float = 0.25,
    gm_frac: float = 0.6,
) -> torch.Tensor:
    """Mean CSF fraction (B,) in [0, 1] of the brain's outer ``band_mm`` band.

    Args:
        images: (B, 1, S, S) or (B, S, S) in [0, 1] on the MNI canvas.
        pixel_mm: pixel spacing, ``pixel_mm_for(S)``.
        band_mm: depth of the outer band (erosion of the brain mask).
        wm_percentile: percentile of the central box taken as the white-matter intensity.
        brain_frac: brain mask threshold (fraction of the reference); below is background.
        csf_frac: intensity (fraction of the reference) at and below which a pixel is CSF.
        gm_frac: intensity (fraction of the reference) at and above which it is tissue.

    Returns:
        (B,) float32 tensor; 0 where an image has no brain mask.
    """
    x = _as_batch(images, pixel_mm)
    ref = reference_intensity(x, wm_percentile)
    f = soft_csf_fraction(x, ref, csf_frac, gm_frac)
    erode = max(1, int(round(band_mm / pixel_mm)))
    out = np.zeros(x.shape[0])
    for i in range(x.shape[0]):
        if ref[i] <= _MIN_REFERENCE:
            continue
        brain = ndimage.binary_fill_holes(x[i] > brain_frac * ref[i])
        # The largest component is the brain; specks of background noise are not.
        labels, n = ndimage.label(brain)
        if n == 0:
            continue
        sizes = ndimage.sum(brain, labels, range(1, n + 1))
        brain = labels == 1 + int(np.argmax(sizes))
        band = brain & ~ndimage.binary_erosion(brain, iterations=erode)
        if band.any():
            out[i] = f[i][band].mean()
    return torch.from_numpy(out.astype(np.float32))


def measure(images: torch.Tensor | np.ndarray, pixel_mm: float) -> dict[str, torch.Tensor]:
    """Both measurements with their defaults: ``ventricle_area_mm2`` and
    ``cortical_csf_fraction``, each (B,)."""
    return {
        "ventricle_area_mm2": ventricle_area(images, pixel_mm),
        "cortical_csf_fraction": cortical_csf_fraction(images, pixel_mm),
    }
