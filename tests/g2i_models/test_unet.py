from collections.abc import Callable

import pytest
import torch
from diffusers.models.attention_processor import Attention

from conf.schema import ModelConfig
from g2i_models.unet import VARIANTS, ConditionalDenoiser, build_denoiser
from tests.g2i_models.tiny import N_SNPS

LATENT = 4


def make(model_config: Callable[..., ModelConfig], **kw: object) -> ConditionalDenoiser:
    torch.manual_seed(0)
    return build_denoiser(model_config(**kw), N_SNPS, LATENT).eval()


def run(
    den: ConditionalDenoiser, genotypes: torch.Tensor, labels: torch.Tensor, drop=None
) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(len(labels), 3, LATENT, LATENT, generator=g)
    t = torch.full((len(labels),), 500)
    with torch.no_grad():
        return den(z, t, genotypes, labels, drop)


def cross_attentions(den: ConditionalDenoiser) -> list[Attention]:
    return [m for m in den.unet.modules() if isinstance(m, Attention) and m.is_cross_attention]


@pytest.mark.parametrize("label_mode", ["concat", "embed"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_output_shape_per_variant(model_config, batch, variant: str, label_mode: str) -> None:
    den = make(model_config, variant=variant, label_mode=label_mode)
    out = run(den, batch["genotypes"], batch["label"])
    assert out.shape == (4, 3, LATENT, LATENT)
    assert torch.isfinite(out).all()
    assert (den.snp_encoder is None) == (variant == "ldm_label")


@pytest.mark.parametrize("variant", ["g2i", "g2i_label_attn", "g2i_plus"])
def test_cross_attention_reads_the_genotype(model_config, batch, variant: str) -> None:
    den = make(model_config, variant=variant)
    assert cross_attentions(den), "no cross-attention layer over SNP tokens"
    labels = batch["label"]
    other = (batch["genotypes"] + 1) % 3
    diff = (run(den, batch["genotypes"], labels) - run(den, other, labels)).abs()
    assert diff.amax(dim=(1, 2, 3)).min() > 1e-4  # every sample changes
    # Zeroing the cross-attention output projections removes the genotype's influence.
    with torch.no_grad():
        for attn in cross_attentions(den):
            attn.to_out[0].weight.zero_()
    same = run(den, batch["genotypes"], labels) - run(den, other, labels)
    assert same.abs().max() < 1e-6


@pytest.mark.parametrize("variant", ["g2i_label_noattn", "g2i_plus"])
def test_pooled_genotype_route_starts_at_zero_and_then_conditions(
    model_config, batch, variant: str
) -> None:
    den = make(model_config, variant=variant)
    assert (cross_attentions(den) == []) == (variant == "g2i_label_noattn")
    proj = den.unet.time_embedding.cond_proj
    assert proj is not None and torch.count_nonzero(proj.weight) == 0
    if variant == "g2i_plus":  # only the pooled route: silence the cross-attention
        with torch.no_grad():
            for attn in cross_attentions(den):
                attn.to_out[0].weight.zero_()
    other = (batch["genotypes"] + 1) % 3
    labels = batch["label"]
    # Zero-initialised: at first the genotype has no effect through this route...
    assert (run(den, batch["genotypes"], labels) - run(den, other, labels)).abs().max() < 1e-6
    # ...and once the projection has a direction, it moves every sample's prediction.
    with torch.no_grad():
        proj.weight.normal_(0, 0.1)
    diff = (run(den, batch["genotypes"], labels) - run(den, other, labels)).abs()
    assert diff.amax(dim=(1, 2, 3)).min() > 1e-4


def test_per_snp_value_embeddings_give_each_snp_its_own_direction(model_config) -> None:
    """The same 0 -> 2 change at two SNPs moves their tokens by different vectors with
    per-SNP values (g2i_plus), by the same vector with the paper's shared values."""
    for variant, distinct in (("g2i_plus", True), ("g2i_label_attn", False)):
        enc = make(model_config, variant=variant).snp_encoder
        emb = enc.genotype_embed.weight
        n_tokens = 5
        stride = n_tokens if enc.config.per_snp_values else 0
        step_a = emb[0 * stride + 2] - emb[0 * stride + 0]
        step_b = emb[1 * stride + 2] - emb[1 * stride + 0]
        assert (not torch.allclose(step_a, step_b)) == distinct


def test_label_only_variant_ignores_genotypes(model_config, batch) -> None:
    den = make(model_config, variant="ldm_label")
    assert cross_attentions(den) == []
    other = (batch["genotypes"] + 1) % 3
    assert torch.equal(
        run(den, batch["genotypes"], batch["label"]), run(den, other, batch["label"])
    )


@pytest.mark.parametrize("label_mode", ["concat", "embed"])
def test_label_conditions_the_output(model_config, batch, label_mode: str) -> None:
    den = make(model_config, variant="g2i_label_attn", label_mode=label_mode)
    if label_mode == "concat":
        assert den.unet.config.in_channels == 3 + 3
    else:
        assert den.unet.config.num_class_embeds == 4  # three classes + the null label
    diff = run(den, batch["genotypes"], batch["label"]) - run(
        den, batch["genotypes"], (batch["label"] + 1) % 3
    )
    assert diff.abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_dropped_samples_ignore_their_conditions(model_config, batch) -> None:
    den = make(model_config, variant="g2i_label_attn")
    drop = torch.tensor([True, True, False, False])
    a = run(den, batch["genotypes"], batch["label"], drop)
    b = run(den, (batch["genotypes"] + 1) % 3, (batch["label"] + 1) % 3, drop)
    assert torch.allclose(a[:2], b[:2], atol=1e-6)
    assert not torch.allclose(a[2:], b[2:])


def test_unknown_variant_names_the_choices(model_config) -> None:
    with pytest.raises(ValueError, match="g2i_label_attn"):
        build_denoiser(model_config(variant="g2i_attn"), N_SNPS, LATENT)
