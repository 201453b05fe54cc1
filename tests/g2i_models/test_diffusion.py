import pytest
import torch

from g2i_models.diffusion import (
    SAMPLERS,
    build_noise_scheduler,
    diffusion_loss,
    diffusion_target,
    sample_latents,
    sampling_scheduler,
)
from g2i_models.unet import build_denoiser
from tests.g2i_models.tiny import N_SNPS


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_share_the_training_schedule(model_config, sampler: str) -> None:
    train = build_noise_scheduler(model_config())
    s = sampling_scheduler(train, sampler)
    assert torch.allclose(s.alphas_cumprod, train.alphas_cumprod)
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
