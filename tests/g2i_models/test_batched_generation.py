"""Batched generation: image i is the same whatever the batch size (per-image generators)."""

from __future__ import annotations

import pytest
import torch

from g2i_models.autoencoder import build_autoencoder, set_scale_factor
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.pipeline import G2IPipeline, generate, image_seed
from g2i_models.unet import build_denoiser
from tests.g2i_models.tiny import IMAGE_SIZE, N_SNPS, tiny_model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 5


def tiny_pipeline() -> G2IPipeline:
    cfg = tiny_model_config()
    torch.manual_seed(0)
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    set_scale_factor(ae, 0.8)
    den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
    return G2IPipeline.from_parts(ae, den, build_noise_scheduler(cfg), sample_steps=3)


@pytest.fixture(scope="module")
def pipe() -> G2IPipeline:
    return tiny_pipeline()


def conditions() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 3, (N, N_SNPS), generator=g), torch.tensor([0, 1, 2, 1, 0])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_batch_one_batch_n_and_one_call_give_the_same_images(pipe, sampler) -> None:
    genotypes, labels = conditions()
    kw = {"sampler": sampler, "guidance_scale": 2.5, "output_type": "latent"}
    one_call = generate(pipe, genotypes, labels, seed=7, batch_size=N, **kw)
    by_one = generate(pipe, genotypes, labels, seed=7, batch_size=1, **kw)
    by_two = generate(pipe, genotypes, labels, seed=7, batch_size=2, **kw)
    assert one_call.shape == (N, 3, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    torch.testing.assert_close(by_one, one_call, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(by_two, one_call, rtol=1e-4, atol=1e-5)
    # An image does not depend on its neighbours: the last image alone is the same.
    alone = generate(
        pipe, genotypes[-1:], labels[-1:], image_seeds=[image_seed(7, N - 1)], **kw
    )
    torch.testing.assert_close(alone, one_call[-1:], rtol=1e-4, atol=1e-5)
    images = generate(pipe, genotypes, labels, seed=7, batch_size=2, sampler=sampler)
    assert images.shape == (N, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert images.min() >= 0 and images.max() <= 1


def test_seeds_and_images_differ(pipe) -> None:
    genotypes, labels = conditions()
    kw = {"sampler": "ddpm", "guidance_scale": 2.5, "output_type": "latent"}
    a = generate(pipe, genotypes, labels, seed=7, batch_size=2, **kw)
    b = generate(pipe, genotypes, labels, seed=8, batch_size=2, **kw)
    assert not torch.allclose(a, b)
    # Same conditions for every image: the per-image seeds alone make them differ.
    same_g, same_y = genotypes[:1].expand(N, -1), labels[:1].expand(N)
    c = generate(pipe, same_g, same_y, seed=7, batch_size=N, **kw)
    assert not torch.allclose(c[0], c[1])


def test_shared_image_seeds_give_shared_noise(pipe) -> None:
    genotypes, labels = conditions()
    same_y = labels[:1].expand(3)
    z = generate(
        pipe, genotypes[:1].expand(3, -1), same_y, image_seeds=[4, 4, 4], output_type="latent"
    )
    torch.testing.assert_close(z[0], z[2], rtol=1e-4, atol=1e-5)


def test_bad_arguments_are_refused(pipe) -> None:
    genotypes, labels = conditions()
    with pytest.raises(ValueError, match="batch_size"):
        generate(pipe, genotypes, labels, batch_size=0)
    with pytest.raises(ValueError, match="image seeds"):
        generate(pipe, genotypes, labels, image_seeds=[1, 2])
