"""The public stage: a null-conditioned model folder that round-trips, and the federation's
starting model seeded from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from g2i_models.datasets import SyntheticSliceDataset
from g2i_models.pretrain import (
    NullConditions,
    PretrainedModelError,
    load_pretrained,
    pretrain_public,
    pretrained_autoencoder,
    seed_from_pretrained,
)
from g2i_models.snp_encoder import NULL_GENOTYPE
from g2i_models.unet import build_denoiser
from tests.g2i_models.tiny import IMAGE_SIZE, tiny_model_config, tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def public_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("public")
    data = SyntheticSliceDataset(16, IMAGE_SIZE, n_snps=12, seed=5)
    cfg = tiny_train_config(max_steps_ae=2, max_steps_ldm=2, scale_batches=2)
    pretrain_public(data, tiny_model_config(), cfg, out, seed=0, progress=False)
    return out / "model"


def test_public_items_carry_no_genotype_and_no_diagnosis() -> None:
    data = NullConditions(SyntheticSliceDataset(4, IMAGE_SIZE, n_snps=12, seed=5), 12, 3)
    for i in range(4):
        item = data[i]
        assert set(item) == {"image", "genotypes", "label"}
        assert bool((item["genotypes"] == NULL_GENOTYPE).all()) and int(item["label"]) == 3


def test_pretrained_folder_round_trips_with_what_made_it(public_dir: Path) -> None:
    pipe = load_pretrained(public_dir)
    info = json.loads((public_dir / "pretraining.json").read_text())
    assert info["stage"] == "public" and info["ldm"]["steps"] == 2
    assert float(pipe.vae.config.scaling_factor) == pytest.approx(info["latent_scale_factor"])
    norms = json.loads((public_dir / "grad_norms.json").read_text())
    assert norms["n"] == 16 and 0 < norms["q10"] <= norms["q50"] <= norms["q90"]


def test_seeding_starts_every_condition_at_the_public_null_model(public_dir: Path) -> None:
    pipe = load_pretrained(public_dir)
    model_cfg = tiny_model_config()
    ae = pretrained_autoencoder(pipe, model_cfg, IMAGE_SIZE)
    assert torch.equal(
        ae.state_dict()["encoder.conv_in.weight"], pipe.vae.state_dict()["encoder.conv_in.weight"]
    )
    # The federation's panel: the public SNPs in another order, one of them missing.
    public = pipe.config.panel["snp_names"]
    panel = [public[0], *reversed(public[2:]), "rs-new"]
    denoiser = build_denoiser(model_cfg, len(panel), 4, panel)
    fresh = seed_from_pretrained(pipe, denoiser, panel)
    assert not [k for k in fresh if k.startswith("unet.")]
    unet = pipe.denoiser.unet.state_dict()
    assert all(torch.equal(v, unet[k]) for k, v in denoiser.unet.state_dict().items())
    # Per-SNP rows follow the SNP's name.
    src = pipe.denoiser.snp_encoder.snp_embed.weight
    assert torch.equal(denoiser.snp_encoder.snp_embed.weight[1], src[len(public) - 1])
    # On the public panel, any condition predicts what the public model predicts with the
    # null condition.
    same = build_denoiser(model_cfg, len(public), 4, public)
    assert seed_from_pretrained(pipe, same, public) == []
    z = torch.randn(3, 3, 4, 4)
    t = torch.tensor([10, 500, 900])
    g = torch.randint(0, 3, (3, len(public)))
    g[:, public.index("APOE_e4")] = torch.tensor([0, 1, 2])  # every e4 count (cumulative codes)
    y = torch.tensor([0, 1, 2])
    null = torch.full((3, len(public)), NULL_GENOTYPE)
    with torch.no_grad():
        expect = pipe.denoiser.eval()(z, t, null, torch.full((3,), 3))
        got = same.eval()(z, t, g, y)
    assert torch.allclose(got, expect, atol=1e-5)


def test_a_pretrained_unet_of_other_sizes_is_refused(public_dir: Path) -> None:
    pipe = load_pretrained(public_dir)
    other = tiny_model_config(unet_channels=[16, 16])
    denoiser = build_denoiser(other, 12, 4, pipe.config.panel["snp_names"])
    with pytest.raises(PretrainedModelError, match="same model"):
        seed_from_pretrained(pipe, denoiser, pipe.config.panel["snp_names"])
    with pytest.raises(PretrainedModelError, match="g2i-pretrain"):
        load_pretrained(public_dir.parent / "nothing")
