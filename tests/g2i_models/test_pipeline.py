import json

import pytest
import torch

from g2i_models.autoencoder import build_autoencoder, set_scale_factor
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.pipeline import G2IPipeline, generate
from g2i_models.unet import VARIANTS, build_denoiser
from tests.g2i_models.tiny import IMAGE_SIZE, N_SNPS


def make_pipeline(model_config, variant: str = "g2i_label_attn", scale: float = 0.8):
    cfg = model_config(variant=variant, label_mode="concat")
    torch.manual_seed(0)
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    set_scale_factor(ae, scale)
    den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
    return G2IPipeline.from_parts(
        ae, den, build_noise_scheduler(cfg), sample_steps=3, guidance_scale=2.0,
        allele_freqs=[0.3] * N_SNPS,
    )  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_save_load_round_trip_gives_identical_outputs(model_config, batch, tmp_path, variant):
    pipe = make_pipeline(model_config, variant)
    before = generate(pipe, batch["genotypes"], batch["label"], seed=5)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["variant"] == variant and index["label_mode"] == "concat"
    assert "torch" in index["versions"]
    assert (tmp_path / "snp_encoder").is_dir() == (variant != "ldm_label")
    loaded = G2IPipeline.from_pretrained(tmp_path)
    assert loaded.scale_factor == pytest.approx(0.8)
    assert loaded.config.sample_steps == 3 and loaded.config.guidance_scale == 2.0
    after = generate(loaded, batch["genotypes"], batch["label"], seed=5)
    assert after.shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(before, after)


def test_stored_scale_factor_is_applied_when_sampling(model_config, batch, monkeypatch):
    pipe = make_pipeline(model_config, scale=4.0)
    z = generate(pipe, batch["genotypes"], batch["label"], seed=1, output_type="latent")
    seen: list[torch.Tensor] = []
    decode = pipe.vae.decode

    def spy(latents: torch.Tensor, *args, **kwargs):
        seen.append(latents.clone())
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", spy)
    images = generate(pipe, batch["genotypes"], batch["label"], seed=1)
    assert len(seen) == 1
    assert torch.allclose(seen[0], z / 4.0)
    assert images.min() >= 0 and images.max() <= 1


def test_samplers_and_guidance_are_selectable(model_config, batch):
    pipe = make_pipeline(model_config)
    outs = {
        (s, g): generate(pipe, batch["genotypes"], batch["label"], sampler=s, guidance_scale=g)
        for s in ("ddpm", "ddim", "dpm++")
        for g in (1.0, 3.0)
    }
    assert not torch.equal(outs["ddim", 1.0], outs["ddim", 3.0])
    assert not torch.equal(outs["ddim", 1.0], outs["dpm++", 1.0])


def test_genotypes_drawn_from_stored_frequencies(model_config):
    pipe = make_pipeline(model_config)
    g = pipe.sample_genotypes(2000, torch.Generator().manual_seed(0))
    assert g.shape == (2000, N_SNPS) and set(g.unique().tolist()) <= {0, 1, 2}
    assert g.float().mean().item() == pytest.approx(0.6, abs=0.03)
