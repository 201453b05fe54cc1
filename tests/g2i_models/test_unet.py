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


def test_noattn_variant_conditions_through_the_pooled_genotype(model_config, batch) -> None:
    den = make(model_config, variant="g2i_label_noattn")
    assert cross_attentions(den) == []
    assert den.unet.config.addition_embed_type == "text_time"
    other = (batch["genotypes"] + 1) % 3
    diff = run(den, batch["genotypes"], batch["label"]) - run(den, other, batch["label"])
    assert diff.abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_g2i_plus_gives_apoe_e4_its_own_code(model_config, batch) -> None:
    """The major locus (APOE e4, located by name in the panel) moves the output at
    initialisation about as much as the diagnosis does; the pooled all-SNP projection starts
    at zero; without a panel there is no locus to locate."""
    panel = ["snp0", "APOE_e4", *(f"snp{i}" for i in range(2, N_SNPS))]
    torch.manual_seed(0)
    den = build_denoiser(model_config(variant="g2i_plus"), N_SNPS, LATENT, panel).eval()
    assert den.snp_encoder.config.major_columns == [1]
    assert torch.count_nonzero(den.cond_embedding.pooled_proj.weight) == 0
    g = batch["genotypes"].clone()
    g[:, 1] = 0
    e4 = g.clone()
    e4[:, 1] = 2
    labels = batch["label"]
    base = run(den, g, labels)
    e4_change = (run(den, e4, labels) - base).norm() / base.norm()
    dx_change = (run(den, g, (labels + 1) % 3) - base).norm() / base.norm()
    assert e4_change > 0.25 * dx_change
    # Changing another SNP alone moves the output far less at initialisation.
    other = g.clone()
    other[:, 5] = (other[:, 5] + 1) % 3
    assert (run(den, other, labels) - base).norm() / base.norm() < 0.5 * e4_change
    no_panel = build_denoiser(model_config(variant="g2i_plus"), N_SNPS, LATENT)
    assert no_panel.snp_encoder.config.major_columns == []


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
