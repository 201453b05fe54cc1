"""NIfTI T1 volumes to normalised axial slices in MNI space, as named composable steps.

load (nibabel) -> check header and data -> reorient to RAS -> check MNI space (voxel size,
extent, similarity to the MNI152 template) -> intensity scaling -> axial slice(s) at MNI z
(mm) resampled on a square MNI canvas.

Which transform is used: the sform when its code is non-zero, else the qform (nibabel's
rule). Both codes 0 (no stated voxel-to-world mapping) and an sform and qform that disagree
by more than ``TRANSFORM_TOLERANCE_MM`` are refused: either could mirror or shift the slice.
Registration is checked by the correlation of the scan with the MNI152 2009 template (nilearn)
over the template's brain; a left-right mirror of a brain correlates as well as the brain
itself, so only the header rules above guard against a flipped axis.

Slice arrays are ``(H, W)`` on a square MNI canvas: rows run from y = +91 mm (anterior, top)
to y = -126 mm (posterior), columns from x = -108.5 mm to x = +108.5 mm (the subject's left
hemisphere on the left: neurological convention). Slices are therefore taken in MNI152 space
as stored in the file's affine (the pipeline assumes scans already registered to MNI, as the
paper's CIVET output is).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from preprocessing.errors import ImageFormatError

# The paper's 181 x 217 mm axial field of view (MNI x -90..90, y -126..90), centred in a
# square canvas 217 mm wide so that resizing keeps the aspect ratio with padding left/right.
CANVAS_Y_MM = (91.0, -126.0)  # top row, bottom row
CANVAS_X_MM = (-108.5, 108.5)  # first column, last column
# A brain registered to MNI152 fits in this box (mm); the image's extent must cover it.
MNI_BRAIN_BOX = ((-70.0, 70.0), (-100.0, 65.0), (-45.0, 75.0))
# The sform and qform may differ by this much (mm, at any corner of the volume) before they
# count as disagreeing; a qform cannot hold shears, so small differences are legitimate.
TRANSFORM_TOLERANCE_MM = 2.0
# Default minimum correlation with the MNI152 template (DataConfig.mni_min_correlation):
# registered synthetic scans give ~0.96, a 10 mm shift ~0.55-0.63, 25 mm ~0.33, a 10% voxel
# size error ~0.42.
MNI_MIN_CORRELATION = 0.5
NORMALIZATIONS = ("percentile", "zscore")


@dataclass(frozen=True)
class SliceSpec:
    """Which axial slices to take and at what size."""

    z_mm: float = 18.0
    n_slices: int = 1
    spacing_mm: float = 2.0
    image_size: int = 64

    def __post_init__(self) -> None:
        if self.n_slices < 1:
            raise ValueError(f"n_slices must be >= 1, got {self.n_slices}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be > 0, got {self.spacing_mm}")

    @property
    def z_levels(self) -> np.ndarray:
        """MNI z (mm) of each slice of the slab, centred on ``z_mm``."""
        offsets = (np.arange(self.n_slices) - (self.n_slices - 1) / 2) * self.spacing_mm
        return self.z_mm + offsets


def load_volume(path: str | Path) -> nib.Nifti1Image:
    """Load a .nii / .nii.gz, check it and return it reoriented to RAS.

    Raises:
        ImageFormatError: unreadable file, not 3-D (a 4-D series with more than one volume),
            non-finite or constant voxels, a degenerate affine.
    """
    path = Path(path)
    if not path.exists():
        raise ImageFormatError("file not found", path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise ImageFormatError(f"cannot read as NIfTI ({type(exc).__name__}: {exc})", path) from exc
    check_transforms(img, path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageFormatError(
            f"expected a 3-D T1 volume, got shape {data.shape}; pass one volume of a series", path
        )
    n_bad = int((~np.isfinite(data)).sum())
    if n_bad:
        raise ImageFormatError(f"{n_bad} voxels are NaN or infinite", path)
    if float(data.max()) == float(data.min()):
        raise ImageFormatError(f"constant image (every voxel is {data.min():g})", path)
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise ImageFormatError("degenerate affine (zero or non-finite voxel size)", path)
    clean = nib.Nifti1Image(data, affine)
    return nib.as_closest_canonical(clean)


def check_transforms(img: nib.spatialimages.SpatialImage, path: str | Path | None = None) -> None:
    """Refuse a NIfTI whose sform and qform codes are both 0, or whose coded sform and qform
    disagree (see the module docstring)."""
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        return
    sform, s_code = img.get_sform(coded=True)
    qform, q_code = img.get_qform(coded=True)
    if not s_code and not q_code:
        raise ImageFormatError(
            "sform and qform codes are both 0, so the header does not say where the voxels "
            "are (orientation or left-right may be wrong); re-export the registered scan with "
            "its affine (e.g. nibabel set_sform(affine, code=4) for MNI152)",
            path,
        )
    if s_code and q_code:
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in img.shape[:3]], indexing="ij"))
        corners = np.vstack([corners.reshape(3, -1), np.ones((1, 8))])
        gap = float(np.abs((sform - qform) @ corners)[:3].max())
        if gap > TRANSFORM_TOLERANCE_MM:
            raise ImageFormatError(
                f"sform (code {int(s_code)}) and qform (code {int(q_code)}) disagree by up to "
                f"{gap:.1f} mm (orientations {''.join(nib.aff2axcodes(sform))} vs "
                f"{''.join(nib.aff2axcodes(qform))}); one of them is wrong: set the wrong one's "
                "code to 0 or copy the right one over it (fslorient, nibabel)",
                path,
            )


@lru_cache(maxsize=1)
def _template_samples() -> tuple[np.ndarray, np.ndarray]:
    """MNI152 2009 template (2 mm, nilearn) at a subsample of voxels in and around the brain:
    world points (3, n) mm and template values (n,)."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    brain = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    brain = ndimage.binary_dilation(brain, iterations=3)
    idx = np.argwhere(brain)[::4].T
    world = template.affine[:3, :3] @ idx + template.affine[:3, 3:4]
    return world, template.get_fdata(dtype=np.float32)[tuple(idx)]


def mni_similarity(img: nib.Nifti1Image, x: np.ndarray | None = None) -> float:
    """Pearson correlation of the volume (``x``, default its data) with the MNI152 template
    over the template's brain, sampling the volume at the template's points (mm)."""
    world, template = _template_samples()
    data = np.asarray(img.dataobj, dtype=np.float32) if x is None else x
    inv = np.linalg.inv(img.affine)
    vox = inv[:3, :3] @ world + inv[:3, 3:4]
    sampled = ndimage.map_coordinates(data, vox, order=1, mode="constant", cval=0.0)
    if sampled.std() == 0:
        return 0.0
    return float(np.corrcoef(sampled, template)[0, 1])


def check_mni_space(
    img: nib.Nifti1Image,
    path: str | Path | None = None,
    min_correlation: float | None = MNI_MIN_CORRELATION,
) -> None:
    """Raise unless the volume's voxel size is plausible, its extent covers an MNI brain and
    (unless ``min_correlation`` is None) it correlates with the MNI152 template at least
    ``min_correlation``."""
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms < 0.3) or np.any(zooms > 8.0):
        raise ImageFormatError(
            f"voxel size {np.round(zooms, 3).tolist()} mm is not that of a T1 registered to MNI",
            path,
        )
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in img.shape[:3]], indexing="ij"))
    corners = corners.reshape(3, -1)
    world = img.affine[:3, :3] @ corners + img.affine[:3, 3:4]
    lo, hi = world.min(axis=1), world.max(axis=1)
    for axis, name, (b_lo, b_hi) in zip(range(3), "xyz", MNI_BRAIN_BOX, strict=True):
        if lo[axis] > b_lo or hi[axis] < b_hi:
            raise ImageFormatError(
                f"its {name} extent {lo[axis]:.0f}..{hi[axis]:.0f} mm does not cover the MNI "
                f"brain ({b_lo:.0f}..{b_hi:.0f} mm); is it registered to MNI152?",
                path,
            )
    if min_correlation is None:
        return
    r = mni_similarity(img)
    if r < min_correlation:
        raise ImageFormatError(
            f"correlation with the MNI152 template is {r:.2f} (< {min_correlation:g}, "
            "data.mni_min_correlation): the scan is not registered to MNI152 (shifted, scaled "
            "or a wrong voxel size in the header); register it, or lower the threshold",
            path,
        )


def foreground_mask(x: np.ndarray) -> np.ndarray:
    """Head voxels: above the mean intensity over the whole field of view, holes filled.

    In a T1 the background (air, with Rician noise) is far below the mean, so this keeps the
    head and drops the background that would otherwise dominate the percentiles.
    """
    return ndimage.binary_fill_holes(x > x.mean())


def normalize_intensity(
    x: np.ndarray, method: str = "percentile", percentiles: tuple[float, float] = (0.5, 99.5)
) -> np.ndarray:
    """Scale intensities using statistics of the foreground only.

    ``percentile``: the low / high foreground percentiles map to 0 / 1, values clipped to
    [0, 1]. ``zscore``: zero mean and unit SD over the foreground.
    """
    fg = x[foreground_mask(x)]
    if fg.size == 0:
        raise ValueError("no foreground voxels to normalise against")
    if method == "percentile":
        lo, hi = np.percentile(fg, percentiles)
        if hi <= lo:
            raise ValueError(f"percentiles {percentiles} give an empty range")
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if method == "zscore":
        return ((x - fg.mean()) / (fg.std() + 1e-8)).astype(np.float32)
    raise ValueError(f"unknown normalization {method!r}; use 'percentile' or 'zscore'")


def canvas_world_points(z_mm: float, size: int) -> np.ndarray:
    """MNI coordinates (3, size*size) of the pixel centres of one axial canvas at ``z_mm``."""
    ys = np.linspace(CANVAS_Y_MM[0], CANVAS_Y_MM[1], size)
    xs = np.linspace(CANVAS_X_MM[0], CANVAS_X_MM[1], size)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, z_mm)])


def axial_slices(img: nib.Nifti1Image, x: np.ndarray, spec: SliceSpec) -> np.ndarray:
    """Sample ``spec`` axial slices of ``x`` (the data of RAS image ``img``).

    Each slice is resampled trilinearly at the pixel centres of the square MNI canvas, after
    an in-plane Gaussian low-pass when the canvas is coarser than the voxels (anti-aliasing).
    Points outside the volume are 0 (padding).

    Returns:
        (n_slices, image_size, image_size) float32.
    """
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    pixel_mm = (CANVAS_X_MM[1] - CANVAS_X_MM[0]) / (spec.image_size - 1)
    sigma = [max(0.0, 0.5 * (pixel_mm / z - 1.0)) for z in zooms[:2]] + [0.0]
    smooth = ndimage.gaussian_filter(x, sigma) if max(sigma) > 0 else x
    inv = np.linalg.inv(img.affine)
    out = np.empty((spec.n_slices, spec.image_size, spec.image_size), dtype=np.float32)
    for i, z in enumerate(spec.z_levels):
        world = canvas_world_points(float(z), spec.image_size)
        vox = inv[:3, :3] @ world + inv[:3, 3:4]
        out[i] = ndimage.map_coordinates(smooth, vox, order=1, mode="constant", cval=0.0).reshape(
            spec.image_size, spec.image_size
        )
    return out


def extract_slices(
    path: str | Path,
    spec: SliceSpec,
    normalization: str = "percentile",
    percentiles: tuple[float, float] = (0.5, 99.5),
    min_correlation: float | None = MNI_MIN_CORRELATION,
) -> np.ndarray:
    """The whole chain for one scan: (n_slices, image_size, image_size) float32.

    Raises:
        ImageFormatError: for anything wrong with this scan (the file named), including an
            intensity range that cannot be normalised.
    """
    if normalization not in NORMALIZATIONS:  # a config error, not this scan's
        raise ValueError(f"unknown normalization {normalization!r}; use 'percentile' or 'zscore'")
    img = load_volume(path)
    check_mni_space(img, path, min_correlation)
    try:
        x = normalize_intensity(
            np.asarray(img.dataobj, dtype=np.float32), normalization, percentiles
        )
    except ValueError as exc:
        raise ImageFormatError(f"cannot normalise intensities: {exc}", path) from None
    return axial_slices(img, x, spec)


def slice_affine(image_size: int, z_mm: float) -> np.ndarray:
    """RAS affine of a canvas slice stored as a (W, H, 1) NIfTI volume.

    Array axis 0 runs along MNI x (canvas columns), axis 1 along MNI y from posterior to
    anterior (canvas rows reversed), axis 2 is the single slice at ``z_mm``.
    """
    step = (CANVAS_X_MM[1] - CANVAS_X_MM[0]) / (image_size - 1)
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = (CANVAS_X_MM[0], CANVAS_Y_MM[1], z_mm)
    return affine


def canvas_to_volume(image: np.ndarray) -> np.ndarray:
    """(H, W) canvas slice -> (W, H, 1) array matching ``slice_affine``."""
    return np.ascontiguousarray(image[::-1, :].T[..., None])
