import math

import numpy as np
import pytest
import torch
from scipy import linalg
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from conf.schema import EvaluationConfig
from g2i_eval.features import FeatureExtractor
from g2i_eval.metrics import (
    against_real,
    diversity,
    fid_kid,
    image_metrics,
    ms_ssim_settings,
)
from g2i_models.datasets import SyntheticSliceDataset


class PooledPixels(FeatureExtractor):
    """Test extractor: 4x4 average-pooled intensities (16 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.name, self.num_features = "pooled-pixels", 16

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


@pytest.fixture(scope="module")
def slices() -> tuple[torch.Tensor, torch.Tensor]:
    ds = SyntheticSliceDataset(n=24, image_size=64)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([d["image"] for d in items]), torch.stack([d["label"] for d in items])


def numpy_psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = ((x.double().numpy() - y.double().numpy()) ** 2).reshape(len(x), -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(1.0 / mse)))


@pytest.mark.parametrize("size", [16, 32, 64, 256])
def test_ms_ssim_settings_work_at_size(size) -> None:
    settings = ms_ssim_settings(size)
    assert sum(settings["betas"]) == pytest.approx(1.0, abs=2e-4)
    x = torch.rand(1, 1, size, size)
    score = multiscale_structural_similarity_index_measure(x, x, data_range=1.0, **settings)
    assert float(score) == pytest.approx(1.0, abs=1e-5)


def test_ms_ssim_settings_keep_standard_at_paper_scale() -> None:
    assert ms_ssim_settings(256)["betas"] == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    assert ms_ssim_settings(256)["kernel_size"] == 11
    assert len(ms_ssim_settings(64)["betas"]) == 4


def aligned(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """against_real's random pairing made deterministic: one real image per label."""
    labels = torch.arange(len(x))
    return against_real(y, labels, x, labels, seed=0)


def test_identical_images_score_perfectly(slices) -> None:
    x = slices[0][:4]
    scores = aligned(x, x.clone())
    assert scores["psnr"] == math.inf or scores["psnr"] > 100
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert scores["ms_ssim"] == pytest.approx(1.0, abs=1e-5)


def test_shift_and_noise_lower_scores(slices) -> None:
    x = slices[0][:4]
    shifted = aligned(x, torch.roll(x, shifts=(3, 2), dims=(-2, -1)))
    assert shifted["ssim"] < 0.99 and shifted["ms_ssim"] < 0.99 and math.isfinite(shifted["psnr"])
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(
        0, 1
    )
    scores = aligned(x, noisy)
    assert scores["psnr"] == pytest.approx(numpy_psnr(x, noisy), rel=1e-5)
    assert scores["ssim"] < 1.0 and scores["ms_ssim"] < 1.0


def test_diversity_pairs_distinct_images(slices) -> None:
    x = slices[0]
    same = diversity(x[:1].repeat(5, 1, 1, 1), n_pairs=100, seed=0)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-5) and same["n_pairs"] == 10  # C(5, 2)
    varied = diversity(x, n_pairs=30, seed=0)
    assert varied["n_pairs"] == 30 and varied["ssim"] < same["ssim"]
    assert varied == diversity(x, n_pairs=30, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        diversity(x[:1], n_pairs=5, seed=0)


def test_against_real_matches_within_diagnosis() -> None:
    g = torch.Generator().manual_seed(0)
    patterns = torch.rand(2, 1, 1, 32, 32, generator=g)
    real = torch.cat([patterns[0].repeat(5, 1, 1, 1), patterns[1].repeat(5, 1, 1, 1)])
    real_labels = torch.tensor([0] * 5 + [2] * 5)
    # Random real partners of the same diagnosis are copies here; another diagnosis is not.
    generated, gen_labels = patterns[:, 0].repeat(6, 1, 1, 1), torch.tensor([0, 2] * 6)
    scores = against_real(generated, gen_labels, real, real_labels, seed=1)
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-5) and scores["n_compared"] == 12
    # Best match finds the exact copy among unrelated images of the same diagnosis.
    real[1:5] = torch.rand(4, 1, 32, 32, generator=g)
    scores = against_real(patterns[:1, 0], torch.tensor([0]), real, real_labels, seed=1)
    assert scores["best_match_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert scores["best_match_psnr"] > 100


def test_fid_matches_the_closed_form() -> None:
    """The reported FID is ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of the features."""
    g = torch.Generator().manual_seed(0)
    real = torch.rand(80, 1, 16, 16, generator=g)
    fake = (0.6 * torch.rand(60, 1, 16, 16, generator=g) + 0.3) ** 2
    extractor = PooledPixels()
    ours = fid_kid(real, fake, extractor, kid_subset_size=50)["fid"]
    a, b = (extractor(x).double().numpy() for x in (real, fake))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    reference = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert ours == pytest.approx(reference, rel=1e-4)
    assert ours > 0.1


def test_fid_zero_for_same_set_and_grows_with_change(slices) -> None:
    x, extractor = slices[0], PooledPixels()
    same = fid_kid(x, x.clone(), extractor, kid_subset_size=10)
    assert same["fid"] == pytest.approx(0.0, abs=1e-4)
    shifted = fid_kid(x, torch.roll(x, 4, dims=-1), extractor, kid_subset_size=10)["fid"]
    bright = fid_kid(x, (x + 0.1).clamp(0, 1), extractor, kid_subset_size=10)["fid"]
    brighter = fid_kid(x, (x + 0.3).clamp(0, 1), extractor, kid_subset_size=10)["fid"]
    assert 0.01 < shifted and 0.01 < bright < brighter
    assert same["feature_extractor"] == "pooled-pixels"
    assert (same["n_real"], same["n_fake"]) == (24, 24)


def test_kid_separates_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    draw_a, draw_b = torch.rand(2, 40, 1, 16, 16, generator=g)
    other = (torch.rand(40, 1, 16, 16, generator=g) * 0.5 + 0.5) ** 2
    extractor = PooledPixels()
    same = fid_kid(draw_a, draw_b, extractor, kid_subset_size=100, seed=0)
    different = fid_kid(draw_a, other, extractor, kid_subset_size=100, seed=0)
    assert same["kid_subset_size"] == 40  # clipped to the smaller set
    assert abs(same["kid_mean"]) < 0.005
    assert different["kid_mean"] > 0.05 and different["kid_mean"] > 10 * abs(same["kid_mean"])
    assert different == fid_kid(draw_a, other, extractor, kid_subset_size=100, seed=0)


def test_image_metrics_nested_and_tagged(slices) -> None:
    images, labels = slices
    generated = torch.roll(images[:12], 1, dims=-1)
    cfg = EvaluationConfig(diversity_pairs=20, kid_subset_size=50)
    out = image_metrics(generated, labels[:12], images[12:], labels[12:], PooledPixels(), cfg)
    assert out["feature_extractor"] == "pooled-pixels"
    assert out["fid_kid"]["feature_extractor"] == "pooled-pixels"
    assert out["fid_kid"]["kid_subset_size"] == 12
    assert set(out["against_real"]) >= {"psnr", "ssim", "ms_ssim", "best_match_ssim"}
    for dx, entry in out["fid_per_diagnosis"].items():
        c = ("CN", "MCI", "AD").index(dx)
        assert entry["feature_extractor"] == "pooled-pixels"
        assert entry["n_fake"] == int((labels[:12] == c).sum()) >= 2
        assert entry["n_real"] == int((labels[12:] == c).sum()) >= 2
    assert out["fid_per_diagnosis"], "the synthetic labels leave at least one class with >= 2"
