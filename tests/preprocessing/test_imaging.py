"""NIfTI to slices: orientation invariance, slice position, normalisation, bad inputs."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from preprocessing.errors import ImageFormatError
from preprocessing.imaging import (
    SliceSpec,
    axial_slices,
    canvas_world_points,
    check_mni_space,
    extract_slices,
    load_volume,
    mni_similarity,
    normalize_intensity,
)
from simulations.anatomy import SubjectAnatomy, load_template_fields, output_grid, render_subject
from simulations.cohort import save_nifti

SPEC = SliceSpec(z_mm=18.0, n_slices=3, spacing_mm=4.0, image_size=32)


def _subject(voxel: float, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    fields = load_template_fields()
    shape, affine = output_grid(voxel, fields)
    anat = SubjectAnatomy(2.0, 0.5, 0.2, (0, 0, 0), (0, 0, 0), (0.0,) * 9, 1.0, 1000.0, noise)
    vol, _ = render_subject(anat, shape, affine, fields, np.random.default_rng(0))
    return vol, affine


@pytest.fixture(scope="module")
def subject_4mm() -> tuple[np.ndarray, np.ndarray]:
    return _subject(4.0)


@pytest.mark.parametrize("code", ["LAS", "LPS", "LPI", "PIR"])
def test_same_slices_whatever_the_stored_orientation(
    code: str, subject_4mm: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    vol, affine = subject_4mm
    save_nifti(vol, affine, "RAS", tmp_path / "ras.nii.gz")
    save_nifti(vol, affine, code, tmp_path / "other.nii.gz")
    assert "".join(nib.aff2axcodes(nib.load(tmp_path / "other.nii.gz").affine)) == code
    a = extract_slices(tmp_path / "ras.nii.gz", SPEC)
    b = extract_slices(tmp_path / "other.nii.gz", SPEC)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_same_anatomy_at_another_voxel_size(tmp_path: Path) -> None:
    for voxel in (2.0, 3.0):
        vol, affine = _subject(voxel)
        save_nifti(vol, affine, "LAS", tmp_path / f"v{voxel}.nii.gz")
    spec = SliceSpec(18.0, 1, 2.0, 48)
    a = extract_slices(tmp_path / "v2.0.nii.gz", spec)[0]
    b = extract_slices(tmp_path / "v3.0.nii.gz", spec)[0]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97
    assert np.abs(a - b).mean() < 0.05


@pytest.mark.parametrize("shift", [0.0, 7.3])
def test_slice_position_follows_the_affine(shift: float) -> None:
    # A volume whose value is its own MNI z coordinate: each slice must read back its level.
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-110.0, -130.0, -80.0 + shift)
    shape = (111, 112, 100)
    z_world = affine[2, 2] * np.arange(shape[2]) + affine[2, 3]
    x = np.broadcast_to(z_world, shape).astype(np.float32)
    img = nib.Nifti1Image(x, affine)
    spec = SliceSpec(z_mm=18.0, n_slices=3, spacing_mm=5.0, image_size=16)
    out = axial_slices(img, x, spec)
    for k, z in enumerate((13.0, 18.0, 23.0)):
        np.testing.assert_allclose(out[k][2:-2, 2:-2], z, atol=1e-4)


def test_canvas_orientation() -> None:
    pts = canvas_world_points(10.0, 5).reshape(3, 5, 5)
    assert pts[1, 0, 0] > pts[1, -1, 0]  # first row anterior
    assert pts[0, 0, 0] < pts[0, 0, -1]  # first column is x negative (left)
    assert np.all(pts[2] == 10.0)


def test_percentile_normalisation_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = np.zeros((20, 20, 20), np.float32)
    x[4:16, 4:16, 4:16] = rng.uniform(100, 200, (12, 12, 12))
    y = normalize_intensity(x, "percentile", (1.0, 99.0))
    fg = x[4:16, 4:16, 4:16]
    lo, hi = np.percentile(fg, [1.0, 99.0])
    np.testing.assert_allclose(y[4:16, 4:16, 4:16], np.clip((fg - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert y.min() == 0.0 and y.max() == 1.0
    z = normalize_intensity(x, "zscore")
    assert abs(z[4:16, 4:16, 4:16].mean()) < 1e-4 and abs(z[4:16, 4:16, 4:16].std() - 1) < 1e-3
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize_intensity(x, "minmax")


def _write(tmp_path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    p = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2, 2, 1]) if affine is None else affine), p)
    return p


def _mni_affine() -> np.ndarray:
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[:3, 3] = (-98.0, -134.0, -72.0)
    return a


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "absent.nii.gz", "not found"),
        (
            lambda p: (
                (p / "x.nii.gz").write_bytes(gzip.compress(b"not a nifti" * 50)) and p / "x.nii.gz"
            ),
            "cannot read",
        ),
        (lambda p: _write(p, np.ones((99, 117, 95, 2), np.float32), _mni_affine()), "3-D"),
        (
            lambda p: _write(
                p,
                np.where(np.eye(99, 117)[..., None] > 0, np.nan, 1.0)
                * np.ones(95).astype(np.float32),
                _mni_affine(),
            ),
            "NaN",
        ),
        (lambda p: _write(p, np.full((99, 117, 95), 7.0, np.float32), _mni_affine()), "constant"),
    ],
)
def test_bad_input_raises_image_format_error(make, message: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(ImageFormatError, match=message) as err:
        extract_slices(path, SPEC)
    assert str(path) in str(err.value)


def test_not_mni_space_is_refused(tmp_path: Path) -> None:
    data = np.random.default_rng(0).uniform(0, 1, (64, 64, 30)).astype(np.float32)
    path = _write(tmp_path, data, np.diag([1.0, 1.0, 1.0, 1.0]))  # 64 mm field of view
    with pytest.raises(ImageFormatError, match="MNI"):
        extract_slices(path, SPEC)


def test_single_volume_4d_is_accepted(tmp_path: Path, subject_4mm) -> None:
    vol, affine = subject_4mm
    p = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(vol[..., None], affine), p)
    assert load_volume(p).shape == vol.shape


def _save_with_codes(
    path: Path, vol: np.ndarray, sform: np.ndarray, s_code: int, qform: np.ndarray, q_code: int
) -> Path:
    img = nib.Nifti1Image(vol.astype(np.float32), sform)
    img.set_sform(sform, code=s_code)
    img.set_qform(qform, code=q_code)
    img.to_filename(str(path))
    return path


def test_sform_and_qform_codes_are_checked(subject_4mm, tmp_path: Path) -> None:
    vol, affine = subject_4mm
    flipped = affine.copy()
    flipped[0] *= -1  # a left-right flipped qform
    flipped[0, 3] = affine[0, 3] + affine[0, 0] * (vol.shape[0] - 1)
    cases = {
        "none": (affine, 0, affine, 0, "codes are both 0"),
        "disagree": (affine, 4, flipped, 4, "disagree by up to"),
    }
    for name, (s, sc, q, qc, message) in cases.items():
        p = _save_with_codes(tmp_path / f"{name}.nii.gz", vol, s, sc, q, qc)
        with pytest.raises(ImageFormatError, match=message) as err:
            extract_slices(p, SPEC)
        assert str(p) in str(err.value)
    # qform alone (sform code 0) is a stated transform: used, same slices as the sform alone
    a = extract_slices(_save_with_codes(tmp_path / "q.nii.gz", vol, affine, 0, affine, 4), SPEC)
    b = extract_slices(_save_with_codes(tmp_path / "s.nii.gz", vol, affine, 4, affine, 0), SPEC)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda a: a + np.outer(np.eye(4)[0], [0, 0, 0, 25.0]), "25 mm"),
        (lambda a: a @ np.diag([1.1, 1.1, 1.1, 1.0]), "voxel size 10% off"),
    ],
)
def test_misregistration_that_passes_the_extent_check_is_refused(
    change, what: str, subject_4mm, tmp_path: Path
) -> None:
    vol, affine = subject_4mm
    wrong = change(affine)
    p = tmp_path / "wrong.nii.gz"
    save_nifti(vol, wrong, "RAS", p)
    img = load_volume(p)
    check_mni_space(img, p, min_correlation=None)  # the extent check alone accepts it
    assert mni_similarity(img) < 0.5 < mni_similarity(load_volume(_ras(vol, affine, tmp_path)))
    with pytest.raises(ImageFormatError, match="correlation with the MNI152 template") as err:
        extract_slices(p, SPEC)
    assert str(p) in str(err.value), what
    extract_slices(p, SPEC, min_correlation=0.1)  # the threshold is the config's to set


def _ras(vol: np.ndarray, affine: np.ndarray, tmp_path: Path) -> Path:
    p = tmp_path / "right.nii.gz"
    save_nifti(vol, affine, "RAS", p)
    return p


def test_constant_foreground_is_an_image_error_not_a_value_error(
    subject_4mm, tmp_path: Path
) -> None:
    vol, affine = subject_4mm
    mask = np.where(vol > vol.mean(), 1000.0, 0.0)  # a mask saved as the T1: flat foreground
    p = tmp_path / "mask.nii.gz"
    save_nifti(mask, affine, "RAS", p)
    with pytest.raises(ImageFormatError, match="cannot normalise") as err:
        extract_slices(p, SPEC, min_correlation=None)
    assert str(p) in str(err.value)
