import pytest
import torch

from g2i_models.autoencoder import (
    PatchDiscriminator,
    autoencoder_loss,
    build_autoencoder,
    decode_latents,
    encode_latents,
    latent_moments,
    latent_size,
    scale_factor_from_moments,
    set_scale_factor,
)
from tests.g2i_models.tiny import IMAGE_SIZE


@pytest.fixture
def ae(model_config):
    torch.manual_seed(0)
    return build_autoencoder(model_config(), IMAGE_SIZE).eval()


def test_latents_at_quarter_size(ae, batch) -> None:
    z = encode_latents(ae, batch["image"])
    assert z.shape == (4, 3, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    assert latent_size(ae) == IMAGE_SIZE // 4
    x = decode_latents(ae, z)
    assert x.shape == batch["image"].shape
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_loss_parts(ae, batch) -> None:
    loss, recon, parts = autoencoder_loss(ae, batch["image"], kl_weight=1e-3)
    assert recon.shape == batch["image"].shape
    assert loss.item() == pytest.approx(parts["l1"] + 1e-3 * parts["kl"], rel=1e-5)


def test_scale_factor_is_one_over_latent_std(ae, batch) -> None:
    batches = [batch, {"image": batch["image"].flip(-1)}]
    moments = latent_moments(ae, batches, torch.device("cpu"), seed=3)
    g = torch.Generator().manual_seed(3)
    z = torch.cat([ae.encode(2 * b["image"] - 1).latent_dist.sample(generator=g) for b in batches])
    assert scale_factor_from_moments(*moments) == pytest.approx(
        1 / z.double().std(unbiased=False).item(), rel=1e-6
    )


def test_scale_factor_is_stored_and_applied(ae, batch, tmp_path) -> None:
    z1 = encode_latents(ae, batch["image"], torch.Generator().manual_seed(0))
    set_scale_factor(ae, 2.5)
    z2 = encode_latents(ae, batch["image"], torch.Generator().manual_seed(0))
    assert torch.allclose(z2, 2.5 * z1, atol=1e-5)
    ae.save_pretrained(tmp_path)
    reloaded = type(ae).from_pretrained(tmp_path)
    assert reloaded.config.scaling_factor == 2.5


def test_patch_discriminator_shape() -> None:
    logits = PatchDiscriminator(channels=8, groups=4)(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 1, 4, 4)


def test_image_size_must_divide(model_config) -> None:
    with pytest.raises(ValueError, match="not divisible"):
        build_autoencoder(model_config(), 18)
