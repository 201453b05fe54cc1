import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from g2i_models.snp_encoder import NULL_GENOTYPE, SNPEncoder


def make_encoder() -> SNPEncoder:
    torch.manual_seed(0)
    return SNPEncoder(n_snps=10, embed_dim=16, depth=2, heads=4)


def test_one_token_per_snp() -> None:
    enc = make_encoder()
    tokens = enc(torch.randint(0, 4, (3, 10)))
    assert tokens.shape == (3, 10, 16)
    assert SNPEncoder.pool(tokens).shape == (3, 16)


def test_tokens_depend_on_genotype_value_and_position() -> None:
    enc = make_encoder().eval()
    g = torch.zeros(2, 10, dtype=torch.long)
    g[1, 4] = 2
    tokens = enc(g)
    assert not torch.allclose(tokens[0], tokens[1])
    # Same value at every SNP still gives distinct tokens: the per-SNP embedding.
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])


def test_null_genotype_is_its_own_token() -> None:
    enc = make_encoder().eval()
    null = torch.full((1, 10), NULL_GENOTYPE)
    missing = torch.full((1, 10), 3)
    assert not torch.allclose(enc(null), enc(missing))


def test_wrong_panel_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="built for 10 SNPs"):
        make_encoder()(torch.zeros(2, 9, dtype=torch.long))


def test_opacus_computes_per_sample_gradients() -> None:
    enc = make_encoder()
    assert ModuleValidator.validate(enc, strict=False) == []
    gsm = GradSampleModule(enc)
    gsm(torch.randint(0, 4, (5, 10))).pow(2).mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad_sample is not None, name
        assert p.grad_sample.shape == (5, *p.shape), name
