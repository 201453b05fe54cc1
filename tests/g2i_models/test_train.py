import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from g2i_models.autoencoder import (
    PatchDiscriminator,
    build_autoencoder,
    latent_moments,
    scale_factor_from_moments,
    set_scale_factor,
)
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.train import (
    evaluate_autoencoder,
    evaluate_ldm,
    proximal_term,
    snapshot,
    train_autoencoder,
    train_ldm,
)
from g2i_models.unet import build_denoiser
from tests.g2i_models.tiny import IMAGE_SIZE, N_SNPS, tiny_train_config

CPU = torch.device("cpu")


def one_batch(batch: dict[str, torch.Tensor], repeats: int = 1) -> list[dict[str, torch.Tensor]]:
    return [batch] * repeats


def smooth_image_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Blob images: learnable by a tiny autoencoder in a few dozen steps."""
    c = torch.linspace(-1, 1, IMAGE_SIZE)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    radii = torch.tensor([0.3, 0.5, 0.7, 0.9])[:, None, None]
    image = torch.sigmoid((radii - (xx**2 + yy**2).sqrt()) * 10)[:, None]
    return {**batch, "image": image}


def test_tiny_autoencoder_overfits_one_batch(model_config, batch) -> None:
    torch.manual_seed(0)
    ae = build_autoencoder(model_config(), IMAGE_SIZE)
    data = one_batch(smooth_image_batch(batch))
    before = evaluate_autoencoder(ae, data, CPU)
    history: list[dict[str, float]] = []
    cfg = tiny_train_config(ae_epochs=80, lr_ae=3e-3)
    metrics = train_autoencoder(ae, data, cfg, CPU, seed=0, history=history)
    after = evaluate_autoencoder(ae, data, CPU)
    assert metrics["steps"] == 80 and metrics["num_examples"] == 320
    assert len(history) == 80
    assert after["l1"] < 0.3 * before["l1"]
    assert after["psnr"] > before["psnr"] + 6


# v on the zero-SNR schedule reached 0.42 of its first loss on this batch (at the last steps v
# is the latent itself, which a nearly noise-only input pins down less than epsilon's target)
@pytest.mark.parametrize(("kind", "bound"), [("epsilon", 0.4), ("v_prediction", 0.55)])
def test_tiny_ldm_overfits_one_batch(model_config, batch, kind: str, bound: float) -> None:
    cfg = model_config(prediction_type=kind)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    # An untrained encoder's posterior is almost pure noise; make it deterministic so that one
    # batch means one set of latents to memorise.
    with torch.no_grad():
        ae.quant_conv.bias[cfg.latent_channels :] = -20.0
    set_scale_factor(ae, scale_factor_from_moments(*latent_moments(ae, [batch], CPU)))
    den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
    scheduler = build_noise_scheduler(cfg)
    history: list[dict[str, float]] = []
    train_ldm(
        den, ae, scheduler, one_batch(batch, 150), tiny_train_config(lr_ldm=2e-3), CPU,
        seed=0, history=history,
    )  # fmt: skip
    first = sum(r["mse"] for r in history[:15]) / 15
    last = sum(r["mse"] for r in history[-15:]) / 15
    assert last < bound * first
    # The autoencoder stays frozen.
    assert all(not p.requires_grad for p in ae.parameters())


def test_max_steps_and_determinism(model_config, batch) -> None:
    cfg = model_config()
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        ae = build_autoencoder(cfg, IMAGE_SIZE)
        den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
        tcfg = tiny_train_config(ldm_epochs=5, max_steps_ldm=3)
        m = train_ldm(
            den, ae, build_noise_scheduler(cfg), one_batch(batch, 4), tcfg, CPU, seed=7,
            cond_dropout=0.5,
        )  # fmt: skip
        m.pop("seconds")  # wall time: the one metric that may differ between identical runs
        results.append(m)
    assert results[0]["steps"] == 3
    assert results[0] == results[1]


def test_proximal_term_pulls_towards_reference(model_config, batch) -> None:
    cfg = model_config()
    torch.manual_seed(0)
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
    reference = snapshot(den)
    assert proximal_term(den, reference, 1.0).item() == 0.0
    tcfg = tiny_train_config(lr_ldm=1e-2, grad_clip=0.0)
    drift = {}
    for mu in (0.0, 100.0):
        den.load_state_dict(reference, strict=False)
        train_ldm(
            den, ae, build_noise_scheduler(cfg), one_batch(batch, 5), tcfg, CPU, seed=0,
            reference=reference, proximal_mu=mu,
        )  # fmt: skip
        drift[mu] = proximal_term(den, reference, 1.0).item()
    assert 0 < drift[100.0] < drift[0.0]


def test_dp_sgd_step_through_opacus(model_config, batch) -> None:
    cfg = model_config()
    torch.manual_seed(0)
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
    dataset = TensorDataset(batch["image"], batch["genotypes"], batch["label"])
    loader = DataLoader(dataset, batch_size=4)
    engine = PrivacyEngine()
    model, optimizer, private_loader = engine.make_private(
        module=den,
        optimizer=torch.optim.SGD(den.parameters(), lr=0.1),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    named = ({"image": x, "genotypes": g, "label": y} for x, g, y in private_loader if len(x))
    before = snapshot(den)
    metrics = train_ldm(
        model, ae, build_noise_scheduler(cfg), named, tiny_train_config(), CPU,
        optimizer=optimizer, reference=None,
    )  # fmt: skip
    assert metrics["steps"] >= 1
    assert engine.get_epsilon(1e-5) > 0
    changed = snapshot(den)
    assert any(not torch.equal(before[k], changed[k]) for k in before)


def test_evaluate_ldm_is_seeded(model_config, batch) -> None:
    cfg = model_config()
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
    s = build_noise_scheduler(cfg)
    a = evaluate_ldm(den, ae, s, one_batch(batch, 2), CPU, seed=3)
    b = evaluate_ldm(den, ae, s, one_batch(batch, 2), CPU, seed=3)
    assert a == b and a["num_examples"] == 8


def test_adversarial_term_needs_a_discriminator(model_config, batch) -> None:
    ae = build_autoencoder(model_config(), IMAGE_SIZE)
    with pytest.raises(ValueError, match="PatchDiscriminator"):
        train_autoencoder(ae, [batch], tiny_train_config(adv_weight=0.1), CPU)


def test_adversarial_term_trains_the_discriminator(model_config, batch) -> None:
    torch.manual_seed(0)
    ae = build_autoencoder(model_config(), IMAGE_SIZE)
    disc = PatchDiscriminator(channels=8, n_layers=2, groups=4)
    before = snapshot(disc)
    cfg = tiny_train_config(adv_weight=0.1, adv_start_step=1, ae_epochs=3)
    history: list[dict[str, float]] = []
    metrics = train_autoencoder(ae, [batch], cfg, CPU, discriminator=disc, history=history)
    assert "d_adv" not in history[0] and "d_adv" in history[1] and "g_adv" in history[2]
    assert metrics["steps"] == 3
    assert any(not torch.equal(before[k], v) for k, v in snapshot(disc).items())
