import pytest
import torch

from g2i_models.condition_embedding import ConditionEmbedding


def test_major_locus_code_is_additive_in_the_allele_count() -> None:
    torch.manual_seed(0)
    emb = ConditionEmbedding(time_embed_dim=16, num_classes=3, n_major=2, pooled_dim=4)
    labels = torch.zeros(6, dtype=torch.long)
    pooled = torch.randn(6, 4)
    # Locus 0 at 0/1/2 copies, missing (3), null (4); locus 1 fixed at 1 copy.
    values = torch.tensor([[0, 1], [1, 1], [2, 1], [3, 1], [4, 1], [2, 0]])
    out = emb(labels, values, pooled)
    step = out[1] - out[0]
    assert torch.allclose(out[2] - out[1], step, atol=1e-5)  # 0->1 equals 1->2
    assert step.norm() > 1.0  # a class-embedding-sized change per copy
    # Missing and null are codes of their own, not a dose.
    for other in (out[3], out[4]):
        assert not torch.allclose(other, out[0]) and not torch.allclose(other, out[2])
    assert not torch.allclose(out[3], out[4])
    # The pooled projection starts at zero: the pooled genotype does not move the code yet.
    assert torch.allclose(out[:5], emb(labels[:5], values[:5], torch.randn(5, 4)))


def test_condition_embedding_checks_its_inputs() -> None:
    emb = ConditionEmbedding(time_embed_dim=8, num_classes=3, n_major=1)
    with pytest.raises(ValueError, match="major loci"):
        emb(torch.zeros(2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        emb(None, torch.zeros(2, 1, dtype=torch.long))
