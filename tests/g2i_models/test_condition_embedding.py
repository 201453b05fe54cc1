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


def test_cumulative_coding_sums_the_codes_of_zero_to_v_copies() -> None:
    torch.manual_seed(0)
    emb = ConditionEmbedding(time_embed_dim=8, num_classes=0, n_major=2, locus_coding="cumulative")
    w = emb.locus_embed.weight.detach()  # (2 loci x 5 values, 8)
    values = torch.tensor([[0, 0], [1, 0], [2, 0], [3, 0], [4, 2]])
    out = emb(None, values).detach()
    # Locus 0's rows 0..4, locus 1's rows 5..9; numpy-free reference sums.
    assert torch.allclose(out[0], w[0] + w[5])
    assert torch.allclose(out[1], w[0] + w[1] + w[5])
    assert torch.allclose(out[2], w[0] + w[1] + w[2] + w[5])
    assert torch.allclose(out[3], w[3] + w[5])  # missing: its own code only
    assert torch.allclose(out[4], w[4] + w[5] + w[6] + w[7])  # null locus 0, two copies locus 1
    with pytest.raises(ValueError, match="locus_coding"):
        ConditionEmbedding(time_embed_dim=8, locus_coding="dose")


def test_cumulative_coding_trains_under_opacus_per_sample_gradients() -> None:
    from opacus import GradSampleModule

    emb = ConditionEmbedding(time_embed_dim=4, num_classes=3, n_major=1, locus_coding="cumulative")
    gsm = GradSampleModule(emb)
    values = torch.tensor([[2], [0]])
    gsm(torch.tensor([0, 1]), values).sum().backward()
    g = emb.locus_embed.weight.grad_sample  # (B, 5, 4)
    # The two-copy subject's gradient reaches codes 0, 1, 2; the non-carrier's only code 0.
    assert g[0, :3].abs().sum(dim=1).min() > 0 and g[0, 3:].abs().sum() == 0
    assert g[1, 0].abs().sum() > 0 and g[1, 1:].abs().sum() == 0
