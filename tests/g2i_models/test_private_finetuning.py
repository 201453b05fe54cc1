"""Private fine-tuning of the conditioning path: frozen parameters stay as they came, one
per-sample gradient per example whatever the draws per example, and the accountant's sample
rate is the Poisson loader's."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from conf.schema import ConfigConflictError, PrivacyConfig
from g2i_models.autoencoder import build_autoencoder
from g2i_models.datasets import SyntheticSliceDataset
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.local_training import make_loader, train_local
from g2i_models.privacy import PrivacyLedger, finish_private, make_private
from g2i_models.train import fold_draws
from g2i_models.trainable import parameter_share, trainable_names
from g2i_models.unet import build_denoiser
from tests.g2i_models.tiny import IMAGE_SIZE, N_SNPS, tiny_model_config, tiny_train_config

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRIVATE = PrivacyConfig(
    mode="dp_sgd",
    noise_multiplier=1.0,
    trainable="conditioning",
    augment_multiplicity=3,
    expected_batch_size=8,
)


def _ldm_round(privacy: PrivacyConfig, steps: int = 3):
    torch.manual_seed(0)
    model_cfg = tiny_model_config()
    ae = build_autoencoder(model_cfg, IMAGE_SIZE).eval()
    denoiser = build_denoiser(model_cfg, N_SNPS, 4)
    before = {k: v.clone() for k, v in denoiser.state_dict().items()}
    data = SyntheticSliceDataset(32, IMAGE_SIZE, n_snps=N_SNPS, seed=0)
    cfg = tiny_train_config(max_steps_ldm=steps, ldm_epochs=1)
    ledger = PrivacyLedger() if privacy.mode == "dp_sgd" else None
    result = train_local(
        "ldm",
        denoiser,
        data,
        cfg,
        CPU,
        1,
        ae=ae,
        scheduler=build_noise_scheduler(model_cfg),
        privacy=privacy,
        ledger=ledger,
    )
    return before, result, ledger


def test_frozen_parameters_are_bit_identical_after_a_private_round() -> None:
    before, result, _ = _ldm_round(PRIVATE)
    trained = set(result.trained)
    assert trained and trained < set(before)
    assert all(
        n.startswith(("snp_encoder.", "cond_embedding.")) or ".attn2." in n or ".norm2." in n
        for n in trained
    )
    frozen = [k for k in before if k not in trained]
    assert all(torch.equal(before[k], result.weights[k]) for k in frozen)
    # The subset did train (DP noise alone moves every trained parameter).
    assert all(not torch.equal(before[k], result.weights[k]) for k in trained)
    assert 0.02 < result.metrics["trained-share"] < 0.3


def test_conditioning_subset_also_trains_without_dp() -> None:
    plain = PrivacyConfig(trainable="conditioning", augment_multiplicity=2)
    before, result, _ = _ldm_round(plain, steps=2)
    frozen = [k for k in before if k not in set(result.trained)]
    assert frozen and all(torch.equal(before[k], result.weights[k]) for k in frozen)


def test_k_draws_give_one_per_sample_gradient_per_example(monkeypatch) -> None:
    counts: list[int] = []
    clip = DPOptimizer.clip_and_accumulate

    def spy(self: DPOptimizer) -> None:
        counts.append(int(self.grad_samples[0].shape[0]))
        clip(self)

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy)
    _, result, _ = _ldm_round(PRIVATE, steps=4)
    assert len(counts) == 4
    # Examples, not draws x examples (empty Poisson batches never reach the clipping).
    assert sum(counts) == result.metrics["num_examples"] > 0


def test_folded_gradient_is_the_gradient_of_the_examples_mean_loss() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    gsm = GradSampleModule(net)
    x = torch.randn(4, 3)
    draws = 3
    noise = torch.randn(4 * draws, 2)
    rows = x.repeat_interleave(draws, dim=0)
    loss = ((gsm(rows) - noise) ** 2).mean()
    loss.backward()
    opt = DPOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=1e9,
        expected_batch_size=4,
    )
    fold_draws(opt, draws)
    folded = net.weight.grad_sample.clone()
    assert folded.shape[0] == 4
    ref = nn.Linear(3, 2)
    ref.load_state_dict(net.state_dict())
    for i in range(4):
        ref.zero_grad()
        part = slice(i * draws, (i + 1) * draws)
        ((ref(rows[part]) - noise[part]) ** 2).mean().backward()
        assert torch.allclose(folded[i], ref.weight.grad, atol=1e-6)


def test_accountant_sample_rate_is_the_poisson_loaders() -> None:
    model_cfg = tiny_model_config()
    denoiser = build_denoiser(model_cfg, N_SNPS, 4)
    data = SyntheticSliceDataset(40, IMAGE_SIZE, n_snps=N_SNPS, seed=0)
    loader = make_loader(data, PRIVATE.expected_batch_size, 0)
    opt = torch.optim.AdamW(denoiser.parameters())
    ledger = PrivacyLedger()
    private = make_private(denoiser, opt, loader, PRIVATE, ledger, 2, 2)
    sampler_rate = private.loader.batch_sampler.sample_rate
    assert sampler_rate == private.sample_rate == pytest.approx(1 / (40 // 8))
    assert private.optimizer.expected_batch_size == round(sampler_rate * len(data))
    private.engine.accountant.step(
        noise_multiplier=private.noise_multiplier, sample_rate=sampler_rate
    )
    finish_private(private, ledger)
    assert ledger.history[-1][1] == sampler_rate


def test_conditioning_is_about_a_tenth_of_the_default_model() -> None:
    names = ["APOE_e4", *(f"snp{i}" for i in range(50))]
    denoiser = build_denoiser(tiny_model_config(**_default_sizes()), 51, 16, names)
    share = parameter_share(denoiser, trainable_names(denoiser, "conditioning"))
    assert 0.05 < share < 0.2  # measured: 0.119


def _default_sizes() -> dict[str, object]:
    from conf.schema import ModelConfig

    base = ModelConfig()
    return {
        k: getattr(base, k)
        for k in (
            "unet_channels",
            "unet_norm_groups",
            "unet_attention_levels",
            "unet_head_dim",
            "snp_embed_dim",
            "snp_depth",
            "snp_heads",
        )
    }


def test_bad_subset_or_draws_are_refused() -> None:
    with pytest.raises(ConfigConflictError, match="trainable"):
        PrivacyConfig(trainable="attention")
    with pytest.raises(ConfigConflictError, match="augment_multiplicity"):
        PrivacyConfig(augment_multiplicity=0)
