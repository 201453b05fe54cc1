"""Synthetic T1 volumes built on the MNI ICBM152 2009 template that ships with nilearn.

Each subject is the template seen through three anatomical changes and scanner nuisance:

- ventricle enlargement: the template's lateral ventricles dilated by ``ventricle_mm``
  (negative shrinks them), through the signed distance to their border;
- cortical atrophy: grey matter within ``cortical_mm`` of the outer CSF replaced by CSF
  (sulcal widening);
- medial-temporal atrophy: a fraction ``mtl_loss`` of grey-matter signal lost in a smooth
  region around both hippocampi;
- nuisance: a small rigid misregistration, a smooth multiplicative bias field, site contrast
  (a gamma) and scale, and Rician noise.

All geometry is in MNI millimetres, so the same anatomy comes out at any voxel size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

# Lateral ventricles of the template: CSF components with a centroid in this box (MNI mm).
_VENTRICLE_BOX = ((-25.0, 25.0), (-35.0, 10.0), (0.0, 30.0))
# Hippocampal regions (MNI mm) and the size of their smooth weighting (SD, mm).
HIPPOCAMPI = ((-27.0, -22.0, -14.0), (27.0, -22.0, -14.0))
HIPPOCAMPUS_SD = (6.0, 11.0, 6.0)
# Width (mm) of the partial-volume ramp at a moved tissue border.
_RAMP_MM = 1.0


@dataclass(frozen=True)
class TemplateFields:
    """Template-space fields at 1 mm, all (197, 233, 189) float32, plus the affine."""

    t1: np.ndarray  # template T1 intensity in [0, 1]
    gm: np.ndarray  # grey-matter probability
    brain: np.ndarray  # brain mask as 0/1
    ventricle_sd: np.ndarray  # signed distance (mm) to the ventricle border, < 0 inside
    outer_csf_dist: np.ndarray  # distance (mm) to the nearest CSF outside the ventricles
    affine: np.ndarray  # voxel -> MNI mm
    csf_intensity: float  # median template intensity inside the ventricles
    wm_intensity: float  # median template intensity in white matter

    def stacked(self) -> torch.Tensor:
        """(1, 5, X, Y, Z): t1, gm, brain, ventricle_sd, outer_csf_dist for one resampling."""
        fields = [self.t1, self.gm, self.brain, self.ventricle_sd, self.outer_csf_dist]
        return torch.from_numpy(np.stack(fields))[None]


@lru_cache(maxsize=1)
def load_template_fields() -> TemplateFields:
    """Load the MNI152 template and derive the fields the anatomy model needs (~5 s)."""
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = t1_img.get_fdata(dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0
    affine = np.asarray(t1_img.affine, dtype=np.float64)

    csf = brain & (gm < 0.3) & (wm < 0.3) & (t1 < 0.45)
    labels, n = ndimage.label(csf)
    centroids = ndimage.center_of_mass(csf, labels, range(1, n + 1))
    sizes = ndimage.sum(csf, labels, range(1, n + 1))
    ventricles = np.zeros_like(csf)
    for k, (c, size) in enumerate(zip(centroids, sizes, strict=True)):
        mm = affine[:3, :3] @ np.asarray(c) + affine[:3, 3]
        inside = all(lo <= v <= hi for v, (lo, hi) in zip(mm, _VENTRICLE_BOX, strict=True))
        if inside and size > 1000:
            ventricles |= labels == k + 1
    if not ventricles.any():
        raise RuntimeError("could not find the lateral ventricles in the MNI152 template")
    ventricle_sd = ndimage.distance_transform_edt(~ventricles) - ndimage.distance_transform_edt(
        ventricles
    )
    outer_csf = (csf & ~ventricles) | ~brain
    outer_csf_dist = ndimage.distance_transform_edt(~outer_csf)
    return TemplateFields(
        t1=t1,
        gm=gm,
        brain=brain.astype(np.float32),
        ventricle_sd=ventricle_sd.astype(np.float32),
        outer_csf_dist=outer_csf_dist.astype(np.float32),
        affine=affine,
        csf_intensity=float(np.median(t1[ventricles])),
        wm_intensity=float(np.median(t1[brain & (wm > 0.9)])),
    )


def output_grid(
    voxel_size: float, fields: TemplateFields
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of a grid covering the template's field of view at ``voxel_size``."""
    extent = np.array(fields.t1.shape, dtype=float)  # 1 mm voxels
    shape = tuple(int(np.ceil(e / voxel_size)) for e in extent)
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = fields.affine[:3, 3] + 0.5 * (voxel_size - 1.0)
    return shape, affine


@dataclass(frozen=True)
class SubjectAnatomy:
    """Per-subject parameters of the anatomy and nuisance model."""

    ventricle_mm: float
    cortical_mm: float
    mtl_loss: float
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    bias_coeffs: tuple[float, ...]  # 9 coefficients of a quadratic log-bias field
    gamma: float
    scale: float
    noise_sd: float


def _rotation(deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ramp(x: np.ndarray) -> np.ndarray:
    """0 for x <= -ramp/2, 1 for x >= ramp/2, linear between (partial volume)."""
    return np.clip(np.float32(0.5) + x / np.float32(_RAMP_MM), 0.0, 1.0)


def render_subject(
    anat: SubjectAnatomy,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    fields: TemplateFields,
    rng: np.random.Generator,
    stack: torch.Tensor | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Render one subject on a RAS grid.

    ``stack`` is ``fields.stacked()``, passed in when rendering many subjects.

    Returns:
        ``volume`` (shape) float32 in scanner units, and measurements of the rendered
        anatomy: ``ventricle_volume_mm3`` (partial-volume ventricle occupancy), ``gm_volume_mm3``.
    """
    if stack is None:
        stack = fields.stacked()
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    # Misregistration: the subject's anatomy is the template rigidly moved by (R, t); a world
    # point x shows template point R^T (x - t).
    rot = _rotation(anat.rotation_deg)
    template_mm = rot.T @ (world - np.asarray(anat.translation_mm)[:, None])
    inv = np.linalg.inv(fields.affine)
    tvox = inv[:3, :3] @ template_mm + inv[:3, 3:4]
    # Trilinear resampling of all fields at once; the template's border voxels are background
    # (and far from the ventricles), so clamping to the border is the right extension.
    size = np.asarray(fields.t1.shape, dtype=np.float64)[:, None]
    grid = (2.0 * tvox / (size - 1) - 1.0)[::-1].T.astype(np.float32)
    grid_t = torch.from_numpy(np.ascontiguousarray(grid)).reshape(1, 1, 1, -1, 3)
    with torch.no_grad():
        out = torch.nn.functional.grid_sample(
            stack, grid_t, mode="bilinear", padding_mode="border", align_corners=True
        )
    t1, gm, brain, vsd, ocd = out.reshape(5, -1).numpy()

    ventricle = _ramp(np.float32(anat.ventricle_mm) - vsd) * brain
    # Shrinking ventricles fill with periventricular white matter.
    shrunk = _ramp(vsd - np.float32(anat.ventricle_mm)) * (vsd < 0)
    cortical = _ramp(np.float32(anat.cortical_mm) - ocd) * gm * brain
    hippo = np.zeros_like(t1)
    tmm = template_mm.astype(np.float32)
    for centre in HIPPOCAMPI:
        d2 = sum(((tmm[a] - centre[a]) / HIPPOCAMPUS_SD[a]) ** 2 for a in range(3))
        hippo = np.maximum(hippo, np.exp(-0.5 * d2))
    mtl = np.float32(anat.mtl_loss) * hippo * gm * brain
    to_csf = np.maximum(np.maximum(ventricle, cortical), mtl)
    x = t1 * (1 - shrunk) + np.float32(fields.wm_intensity) * shrunk
    x = x * (1 - to_csf) + np.float32(fields.csf_intensity) * to_csf

    # Scanner: contrast, smooth bias field, scale, Rician noise.
    x = np.clip(x, 0, None) ** np.float32(anat.gamma)
    u = ((world - world.mean(axis=1, keepdims=True)) / 100.0).astype(np.float32)
    terms = (
        u[0],
        u[1],
        u[2],
        u[0] * u[1],
        u[0] * u[2],
        u[1] * u[2],
        u[0] ** 2,
        u[1] ** 2,
        u[2] ** 2,
    )
    log_bias = sum(np.float32(c) * term for c, term in zip(anat.bias_coeffs, terms, strict=True))
    x = x * np.exp(log_bias)
    sd = anat.noise_sd
    noise = rng.standard_normal((2, x.size), dtype=np.float32) * np.float32(sd)
    x = np.sqrt((x + noise[0]) ** 2 + noise[1] ** 2)
    x = (x * np.float32(anat.scale)).astype(np.float32).reshape(shape)

    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    gm_left = gm * brain * (1 - to_csf)
    return x, {
        "ventricle_volume_mm3": float(ventricle.sum(dtype=np.float64) * voxel_mm3),
        "gm_volume_mm3": float(gm_left.sum(dtype=np.float64) * voxel_mm3),
    }


def ventricle_volume_curve(fields: TemplateFields, dilations_mm: np.ndarray) -> np.ndarray:
    """Template ventricle volume (mm^3, 1 mm grid, partial volume) at each dilation."""
    vsd = fields.ventricle_sd[fields.brain > 0]
    return np.array([float(_ramp(d - vsd).sum()) for d in dilations_mm])
