"""Effect slopes, APOE profiles, group means and effect recovery on a tiny pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from g2i_eval.effects import (
    EffectRecoveryError,
    apoe_columns,
    apoe_profiles,
    e4_counts,
    effect_recovery,
    effect_slope,
    group_mean_differences,
    paired_effect_slope,
    real_slope,
    save_difference_figure,
    save_e4_figure,
    within_group_slope,
)
from g2i_models.autoencoder import build_autoencoder, set_scale_factor
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.pipeline import G2IPipeline
from g2i_models.unet import build_denoiser
from tests.g2i_eval.test_morphometry import phantom
from tests.g2i_models.tiny import IMAGE_SIZE, N_SNPS, tiny_model_config

# Tiny networks: thread start-up and contention cost more than they save.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


PANEL = ["rs429358"] + [f"rs{i}" for i in range(1, N_SNPS - 1)] + ["APOE_e4"]


def tiny_pipeline(variant: str = "g2i_label_attn") -> G2IPipeline:
    cfg = tiny_model_config(variant=variant)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    set_scale_factor(ae, 1.0)
    den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
    return G2IPipeline.from_parts(ae, den, build_noise_scheduler(cfg), sample_steps=2)


def test_slope_of_planted_linear_data_and_ci_shrinks() -> None:
    rng = np.random.default_rng(0)
    fits = []
    for n in (200, 3200):
        e4 = rng.integers(0, 3, n)
        y = 1000.0 + 50.0 * e4 + rng.normal(0, 40.0, n)
        fits.append(effect_slope(y, e4, n_boot=500, seed=1))
    small, big = fits
    for fit in fits:
        assert fit["ci_low"] < 50.0 < fit["ci_high"]
        assert fit["ci_low"] < fit["slope"] < fit["ci_high"]
    assert small["n"] == 200 and big["slope"] == pytest.approx(50.0, abs=3.0)
    width = [f["ci_high"] - f["ci_low"] for f in fits]
    # The CI narrows as 1/sqrt(n): 16x the data, about a quarter of the width.
    assert width[1] < 0.4 * width[0]
    assert effect_slope(-np.arange(6.0), np.arange(6) % 3)["slope"] < 0


def test_paired_slope_removes_between_seed_variation() -> None:
    rng = np.random.default_rng(1)  # a 95% CI misses 1 draw in 20 (seed 0 is one)
    seed_offset = np.repeat(rng.normal(0, 500.0, 40), 3)  # large per-seed differences
    e4 = np.tile([0, 1, 2], 40)
    y = 1000.0 + seed_offset + 20.0 * e4 + rng.normal(0, 5.0, e4.size)
    groups = np.repeat(np.arange(40), 3)
    paired = paired_effect_slope(y, e4, groups, n_boot=500)
    pooled = effect_slope(y, e4, n_boot=500)
    assert paired["n"] == 40 and paired["slope"] == pytest.approx(pooled["slope"])
    assert paired["ci_low"] < 20.0 < paired["ci_high"]
    assert paired["ci_high"] - paired["ci_low"] < 0.1 * (pooled["ci_high"] - pooled["ci_low"])
    with pytest.raises(EffectRecoveryError, match="single e4"):
        paired_effect_slope(y[:4], np.array([0, 1, 2, 0]), np.array([0, 0, 0, 1]))


def test_slope_needs_varying_e4() -> None:
    with pytest.raises(EffectRecoveryError, match="single value"):
        effect_slope(np.arange(4.0), np.ones(4))


def test_apoe_profiles_differ_only_in_apoe_columns() -> None:
    assert apoe_columns(PANEL) == [0, N_SNPS - 1]
    base = torch.randint(0, 3, (N_SNPS,))
    prof = apoe_profiles(base, PANEL)
    assert prof.shape == (3, N_SNPS) and prof.dtype == torch.long
    others = [i for i in range(N_SNPS) if i not in (0, N_SNPS - 1)]
    assert torch.equal(prof[:, others], base[others].expand(3, -1))
    assert prof[:, [0, N_SNPS - 1]].tolist() == [[0, 0], [1, 1], [2, 2]]
    only_count = apoe_profiles(base[1:], PANEL[1:], counts=(2, 0))
    assert only_count[:, -1].tolist() == [2, 0]
    with pytest.raises(EffectRecoveryError, match="rs1"):
        apoe_profiles(base[1:-1], PANEL[1:-1])


def test_e4_count_falls_back_to_the_snp_when_the_count_is_missing() -> None:
    g = torch.zeros(3, N_SNPS, dtype=torch.long)
    g[:, 0] = torch.tensor([2, 1, 3])  # rs429358
    g[:, -1] = torch.tensor([1, 3, 3])  # APOE_e4
    assert e4_counts(g, PANEL).tolist() == [1, 1, -1]


def test_group_means_and_differences_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((7, 1, 5, 5))
    y = np.array([0, 0, 1, 2, 2, 2, 1])
    out = group_mean_differences(x, y)
    means = {n: x[y == k, 0].mean(axis=0) for k, n in enumerate(("CN", "MCI", "AD"))}
    for name, m in means.items():
        np.testing.assert_allclose(out["means"][name].numpy(), m)
    np.testing.assert_allclose(out["differences"]["MCI-CN"], means["MCI"] - means["CN"])
    np.testing.assert_allclose(out["differences"]["AD-CN"], means["AD"] - means["CN"])
    np.testing.assert_allclose(out["differences"]["AD-MCI"], means["AD"] - means["MCI"])
    two = group_mean_differences(x[y != 1], y[y != 1])
    assert list(two["differences"]) == ["AD-CN"]


def test_figures_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 8, 8))
    diffs = group_mean_differences(x, np.array([0, 1, 2, 0, 1, 2]))["differences"]
    p = save_difference_figure(diffs, tmp_path / "fig" / "diff.png", "test")
    assert p.stat().st_size > 1000
    q = save_e4_figure(x, np.array([0, 1, 2, 0, 1, 2]), tmp_path / "e4.png")
    assert q.stat().st_size > 1000
    with pytest.raises(EffectRecoveryError, match="e4 = 0"):
        save_e4_figure(x, np.ones(6), tmp_path / "bad.png")


def test_real_slope_recovers_a_planted_ventricle_effect() -> None:
    items, true_area, true_e4 = [], [], []
    for i, e4 in enumerate([0, 1, 2, 0, 1, 2, 0, 1, 2, 3]):
        a = 10.0 + 2.0 * min(e4, 2) + 0.5 * (i // 3)
        if e4 < 3:
            true_area.append(np.pi * 1.6 * a * a)
            true_e4.append(e4)
        g = torch.zeros(N_SNPS, dtype=torch.long)
        g[-1] = e4  # 3 = missing: left out
        g[0] = 3
        image = torch.from_numpy(phantom(ventricle_mm=(a, 1.6 * a)))[None]
        items.append({"image": image, "genotypes": g, "label": torch.tensor(i % 2)})
    out = real_slope(items, PANEL, n_boot=200)
    assert out["n"] == 9
    planted = np.polyfit(true_e4, true_area, 1)[0]  # ~ 300 mm^2 per copy
    assert out["slope"] == pytest.approx(planted, rel=0.15)
    assert out["ci_low"] > 0
    assert set(out["per_diagnosis"]) == {"CN", "MCI"}
    # Both diagnoses carry the same planted effect: the within-diagnosis slope sees it too.
    assert out["within_diagnosis"]["slope"] == pytest.approx(planted, rel=0.2)


def test_within_group_slope_is_the_fixed_effects_regression() -> None:
    """e4 raises the chance of AD and AD has larger ventricles: the pooled slope mixes both;
    the within-diagnosis slope is the e4 coefficient of OLS with one intercept per diagnosis
    (numpy least squares on dummy columns), here the planted 50."""
    rng = np.random.default_rng(0)
    n = 1500
    e4 = rng.choice([0, 1, 2], n, p=[0.6, 0.3, 0.1])
    dx = np.minimum((rng.random(n) < 0.2 + 0.25 * e4).astype(int) * 2 + rng.integers(0, 2, n), 2)
    area = 800 + 400 * dx + 50 * e4 + rng.normal(0, 60, n)
    design = np.column_stack([e4, *(dx == d for d in range(3))]).astype(float)
    reference = np.linalg.lstsq(design, area, rcond=None)[0][0]
    fit = within_group_slope(area, e4, dx, n_boot=300)
    assert fit["slope"] == pytest.approx(reference, rel=1e-9)
    assert abs(fit["slope"] - 50) < 10 and fit["ci_high"] - fit["ci_low"] < 25
    assert effect_slope(area, e4, n_boot=10)["slope"] > 150  # the pooled slope is not it
    with pytest.raises(EffectRecoveryError, match="within any stratum"):
        within_group_slope(area, dx, dx, n_boot=10)


def test_effect_recovery_end_to_end_on_a_tiny_pipeline() -> None:
    pipe = tiny_pipeline()
    base = torch.randint(0, 3, (3, N_SNPS), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 2])
    out = effect_recovery(pipe, PANEL, base, labels, true_slope=200.0, n_samples=2, n_boot=50)
    for key in ("slope", "ci_low", "ci_high", "ratio", "ratio_ci_low", "ratio_ci_high"):
        assert np.isfinite(out[key]), key
    assert out["true_slope"] == 200.0 and out["n"] == 12
    assert out["ratio"] == pytest.approx(out["slope"] / 200.0)
    assert out["ratio_ci_low"] <= out["ratio_ci_high"]
    assert set(out["per_diagnosis"]) == {"CN", "AD"}
    for fit in out["per_diagnosis"].values():
        assert np.isfinite([fit["slope"], fit["ratio"], fit["cortical_slope"]]).all()
    assert np.isfinite(out["cortical"]["slope"])
    assert out["paired"]["n"] == 4 and out["paired"]["slope"] == pytest.approx(out["slope"])
    assert np.isfinite([out["paired"][k] for k in ("ci_low", "ci_high", "ratio")]).all()
    assert out["images"].shape == (12, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert out["e4"].tolist() == [0, 0, 1, 1, 2, 2] * 2
    assert out["labels"].tolist() == [0] * 6 + [2] * 6
    assert out["ventricle_area_mm2"].shape == (12,)
    with pytest.raises(EffectRecoveryError, match="true_slope"):
        effect_recovery(pipe, PANEL, base, labels, true_slope=0.0, n_samples=1)


def test_only_the_genotype_differs_between_e4_counts() -> None:
    # A label-only model ignores genotypes: with shared noise the images are identical.
    pipe = tiny_pipeline("ldm_label")
    base = torch.zeros(1, N_SNPS, dtype=torch.long)
    out = effect_recovery(pipe, PANEL, base, torch.tensor([1]), 100.0, n_samples=2, n_boot=20)
    x = out["images"]
    assert torch.equal(x[0:2], x[2:4]) and torch.equal(x[0:2], x[4:6])
    assert not torch.equal(x[0], x[1])
    assert out["slope"] == 0.0 and out["ratio"] == 0.0
    assert out["paired"]["ci_low"] == out["paired"]["ci_high"] == 0.0
