import pytest
import torch

from g2i_models.condition_embedding import ConditionEmbedding


def test_every_major_locus_value_has_a_code_of_its_own() -> None:
    torch.manual_seed(0)
    emb = ConditionEmbedding(time_embed_dim=16, num_classes=3, n_major=2, pooled_dim=4)
    labels = torch.zeros(6, dtype=torch.long)
    pooled = torch.randn(6, 4)
    # Locus 0 at 0/1/2 copies, missing (3), null (4); locus 1 fixed at 1 copy.
    values = torch.tensor([[0, 1], [1, 1], [2, 1], [3, 1], [4, 1], [2, 0]])
    out = emb(labels, values, pooled)
    for i in range(5):
        for j in range(i + 1, 5):
            assert (out[i] - out[j]).norm() > 1.0  # class-embedding-sized differences
    # The second locus has codes of its own (locus 0 at 2 copies, locus 1 at 1 vs 0).
    assert (out[2] - out[5]).norm() > 1.0
    # The pooled projection starts at zero: the pooled genotype does not move the code yet.
    assert torch.allclose(out[:5], emb(labels[:5], values[:5], torch.randn(5, 4)))


def test_condition_embedding_checks_its_inputs() -> None:
    emb = ConditionEmbedding(time_embed_dim=8, num_classes=3, n_major=1)
    with pytest.raises(ValueError, match="major loci"):
        emb(torch.zeros(2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        emb(None, torch.zeros(2, 1, dtype=torch.long))
