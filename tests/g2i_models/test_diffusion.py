import pytest
import torch

from g2i_models.diffusion import (
    SAMPLERS,
    build_noise_scheduler,
    diffusion_loss,
    diffusion_target,
    sample_latents,
    sampling_scheduler,
    snr_weight,
)
from g2i_models.unet import build_denoiser
from tests.g2i_models.tiny import N_SNPS


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_share_the_training_schedule(model_config, sampler: str) -> None:
    train = build_noise_scheduler(model_config())
    s = sampling_scheduler(train, sampler)
    # DPM-Solver++ holds a zero-SNR schedule's last alpha_bar at 2**-24 (its log-SNR at 0)
    assert torch.allclose(s.alphas_cumprod[:-1], train.alphas_cumprod[:-1])
    assert abs(float(s.alphas_cumprod[-1] - train.alphas_cumprod[-1])) <= 2**-24
    s.set_timesteps(10)
    assert len(s.timesteps) == 10
    assert int(s.timesteps[0]) == train.config.num_train_timesteps - 1


def test_unknown_sampler(model_config) -> None:
    with pytest.raises(ValueError, match="ddim"):
        sampling_scheduler(build_noise_scheduler(model_config()), "euler")


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_target_by_prediction_type(model_config, kind: str) -> None:
    s = build_noise_scheduler(model_config(prediction_type=kind))
    z0, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 900])
    expected = {"epsilon": noise, "sample": z0, "v_prediction": s.get_velocity(z0, noise, t)}
    assert torch.equal(diffusion_target(s, z0, noise, t), expected[kind])


def test_loss_is_seeded_and_positive(model_config, batch) -> None:
    cfg = model_config()
    den = build_denoiser(cfg, N_SNPS, 4)
    s = build_noise_scheduler(cfg)
    z0 = torch.randn(4, 3, 4, 4)
    args = (den, s, z0, batch["genotypes"], batch["label"], 0.5)
    a = diffusion_loss(*args, generator=torch.Generator().manual_seed(0))
    b = diffusion_loss(*args, generator=torch.Generator().manual_seed(0))
    assert a.item() == b.item() > 0


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sample_latents(model_config, batch, sampler: str, guidance: float) -> None:
    cfg = model_config()
    den = build_denoiser(cfg, N_SNPS, 4).eval()
    s = sampling_scheduler(build_noise_scheduler(cfg), sampler)
    z = sample_latents(
        den, s, (4, 3, 4, 4), batch["genotypes"], batch["label"], 3, guidance,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert z.shape == (4, 3, 4, 4)
    assert torch.isfinite(z).all()


def test_genotype_guidance_is_its_own_term(model_config, batch) -> None:
    """One DDIM step by hand: eps_null + s (eps_dx - eps_null) + s_g (eps_cond - eps_dx),
    eps_dx with the null genotype and the diagnosis kept; s_g = s is the plain formula."""
    cfg = model_config(variant="g2i_plus")
    torch.manual_seed(0)
    den = build_denoiser(cfg, N_SNPS, 4).eval()
    g, y = batch["genotypes"], batch["label"]
    shape, s, s_g = (4, 3, 4, 4), 1.5, 4.0

    def run(**kw):
        sched = sampling_scheduler(build_noise_scheduler(cfg), "ddim")
        return sample_latents(den, sched, shape, g, y, 1, s, torch.Generator().manual_seed(3), **kw)

    sched = sampling_scheduler(build_noise_scheduler(cfg), "ddim")
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    z = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * sched.init_noise_sigma
    tb = torch.full((4,), int(t), dtype=torch.long)
    no, yes = torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    with torch.no_grad():
        cond = den(z, tb, g, y, no)
        dx_only = den(z, tb, g, y, no, yes)
        null = den(z, tb, g, y, yes)
    assert (dx_only - cond).abs().max() > 0  # the genotype moves the prediction
    assert (dx_only - null).abs().max() > 0  # the diagnosis too
    split = null + s * (dx_only - null) + s_g * (cond - dx_only)
    expected = sched.step(split, t, z).prev_sample
    assert torch.allclose(run(genotype_guidance_scale=s_g), expected, atol=1e-5)
    plain = sched.step(null + s * (cond - null), t, z).prev_sample
    assert torch.allclose(run(genotype_guidance_scale=s), plain, atol=1e-5)
    assert torch.allclose(run(), plain, atol=1e-5)


def test_genotype_dropout_nulls_the_genotype_and_keeps_the_diagnosis(model_config) -> None:
    cfg = model_config(variant="g2i_plus")
    den = build_denoiser(cfg, N_SNPS, 4)
    seen = {}

    def spy(module, args, kwargs):
        seen["drop"], seen["drop_g"] = args[4], args[5] if len(args) > 5 else None

    den.register_forward_pre_hook(spy, with_kwargs=True)
    s = build_noise_scheduler(cfg)
    n = 4000
    z0 = torch.randn(n, 3, 4, 4)
    g, y = torch.randint(0, 3, (n, N_SNPS)), torch.randint(0, 3, (n,))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        diffusion_loss(den, s, z0, g, y, 0.1, gen, genotype_dropout=0.2)
    drop, drop_g = seen["drop"], seen["drop_g"]
    assert abs(drop.float().mean() - 0.1) < 0.02 and abs(drop_g.float().mean() - 0.2) < 0.02
    # Independent draws: both happen at about 0.1 * 0.2.
    assert abs((drop & drop_g).float().mean() - 0.02) < 0.01
    with torch.no_grad():
        diffusion_loss(den, s, z0[:8], g[:8], y[:8], 0.1, torch.Generator().manual_seed(0))
    assert seen["drop_g"] is None  # no genotype dropout: the plain call


def test_zero_terminal_snr_needs_v_prediction(model_config) -> None:
    with pytest.raises(ValueError, match="v_prediction"):
        build_noise_scheduler(model_config(prediction_type="epsilon", rescale_betas_zero_snr=True))


@pytest.mark.parametrize("variant", ["ldm_label", "g2i", "g2i_label_noattn", "g2i_label_attn"])
def test_paper_variants_predict_the_noise_on_the_usual_schedule(model_config, variant) -> None:
    s = build_noise_scheduler(model_config(variant=variant))
    assert s.config.prediction_type == "epsilon" and not s.config.rescale_betas_zero_snr
    assert float(s.alphas_cumprod[-1]) > 1e-3  # eq. 3 with the usual betas: signal left at T


def test_our_default_predicts_v_at_zero_terminal_snr(model_config) -> None:
    s = build_noise_scheduler(model_config())  # g2i_plus
    assert s.config.prediction_type == "v_prediction" and s.config.rescale_betas_zero_snr
    explicit = build_noise_scheduler(model_config(prediction_type="epsilon"))
    assert explicit.config.prediction_type == "epsilon"
    assert not explicit.config.rescale_betas_zero_snr  # the variant's zero SNR needs v


def test_unknown_prediction_type_names_the_choices(model_config) -> None:
    with pytest.raises(ValueError, match="v_prediction"):
        build_noise_scheduler(model_config(prediction_type="x0"))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_zero_terminal_snr_schedule_samples(model_config, batch, sampler: str) -> None:
    """The last training step holds no signal, and every sampler still starts from it and
    gives finite latents (DDPM and DDIM divide by sqrt(alpha_bar) only for epsilon)."""
    cfg = model_config(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    train = build_noise_scheduler(cfg)
    assert float(train.alphas_cumprod[-1]) < 1e-6
    assert float(train.alphas_cumprod[-1]) < float(train.alphas_cumprod[-2])
    plain = build_noise_scheduler(
        model_config(prediction_type="v_prediction", rescale_betas_zero_snr=False)
    )
    assert float(plain.alphas_cumprod[-1]) > 1e-3  # the default schedule leaves signal at T
    s = sampling_scheduler(train, sampler)
    # DPM-Solver++ holds the last alpha_bar at 2**-24 (its log-SNR would be -inf at 0)
    assert torch.allclose(s.alphas_cumprod[:-1], train.alphas_cumprod[:-1])
    assert abs(float(s.alphas_cumprod[-1] - train.alphas_cumprod[-1])) <= 2**-24
    den = build_denoiser(cfg, N_SNPS, 4).eval()
    z = sample_latents(
        den, s, (4, 3, 4, 4), batch["genotypes"], batch["label"], 3, 1.5,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.isfinite(z).all()


class _ZeroDenoiser(torch.nn.Module):
    """Predicts 0 and keeps the timesteps it was called with."""

    def forward(self, z_t, t, genotypes, labels, drop, drop_g):  # noqa: ANN001, ANN201
        self.t = t.clone()
        return torch.zeros_like(z_t)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_snr_weight_against_the_formula(model_config, kind: str) -> None:
    s = build_noise_scheduler(model_config(prediction_type=kind))
    t = torch.tensor([0, 50, 300, 600, 900])
    abar = s.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    clipped = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64))
    by_kind = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}
    assert torch.allclose(snr_weight(s, t, 5.0).double(), by_kind[kind], rtol=1e-5)
    # the high-SNR end is capped: t = 0 weighs far less than 1 for epsilon and v
    if kind != "sample":
        assert float(snr_weight(s, t, 5.0)[0]) < 0.01


def test_min_snr_loss_is_the_weighted_mean_of_the_rows(model_config, batch) -> None:
    cfg = model_config(prediction_type="v_prediction")
    s = build_noise_scheduler(cfg)
    den = _ZeroDenoiser()
    z0 = torch.randn(4, 3, 4, 4)
    args = (den, s, z0, batch["genotypes"], batch["label"], 0.0)
    loss = diffusion_loss(*args, torch.Generator().manual_seed(3), snr_gamma=5.0)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(3))
    target = s.get_velocity(z0, noise, den.t)
    rows = target.pow(2).flatten(1).mean(dim=1)
    expected = (snr_weight(s, den.t, 5.0) * rows).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    plain = diffusion_loss(*args, torch.Generator().manual_seed(3))
    assert torch.allclose(plain, rows.mean(), rtol=1e-5)


def test_timestep_power_moves_the_draws_to_the_noisy_end(model_config) -> None:
    s = build_noise_scheduler(model_config())
    n = 20_000
    den = _ZeroDenoiser()
    z0 = torch.zeros(n, 1, 1, 1)
    means = {}
    for power in (1.0, 0.5):
        diffusion_loss(
            den, s, z0, None, None, 0.0, torch.Generator().manual_seed(0), timestep_power=power
        )
        assert int(den.t.min()) >= 0 and int(den.t.max()) <= s.config.num_train_timesteps - 1
        means[power] = float(den.t.float().mean()) / s.config.num_train_timesteps
    # E[u] = 1/2; E[u ** 0.5] = 2/3
    assert abs(means[1.0] - 0.5) < 0.01
    assert abs(means[0.5] - 2 / 3) < 0.01
