"""The centralized baseline: autoencoder, then LDM, on one dataset; writes the model folder,
sample grids, loss curves and metrics. ``g2i-train`` is a thin CLI over ``train_centralized``.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from conf.schema import ModelConfig, PrivacyConfig, TrainConfig
from g2i_models.autoencoder import (
    PatchDiscriminator,
    build_autoencoder,
    latent_moments,
    latent_size,
    scale_factor_from_moments,
    set_scale_factor,
)
from g2i_models.device import get_device, seed_everything
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.local_training import (
    derive_seed,
    e4_columns_of,
    make_loader,
    panel_names,
    train_local,
)
from g2i_models.panel import dataset_panel
from g2i_models.pipeline import G2IPipeline, generate, sampler_defaults
from g2i_models.plots import CLASS_NAMES, save_loss_curves, save_sample_grid
from g2i_models.privacy import PrivacyLedger, batches_per_epoch, planned_steps
from g2i_models.snp_encoder import MISSING_GENOTYPE
from g2i_models.train import condition_use, evaluate_autoencoder, evaluate_ldm
from g2i_models.unet import build_denoiser

log = logging.getLogger(__name__)

# The name the centralized baseline's random streams are derived under (a site's is its own).
CENTRAL_SITE = "centralized"


def allele_frequencies(dataset: Dataset) -> list[float]:
    """Per-SNP risk-allele frequency over the known genotypes of ``dataset``."""
    genotypes = torch.stack([dataset[i]["genotypes"] for i in range(len(dataset))])
    known = genotypes != MISSING_GENOTYPE
    counts = torch.where(known, genotypes, 0).sum(0).float()
    return (counts / (2 * known.sum(0).clamp(min=1))).tolist()


def conditions_per_class(
    dataset: Dataset, per_class: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Genotypes (B, n_snps) and labels (B,) of up to ``per_class`` subjects of each class."""
    picked: dict[int, list[torch.Tensor]] = {k: [] for k in range(num_classes)}
    for i in range(len(dataset)):
        item = dataset[i]
        k = int(item["label"])
        if len(picked[k]) < per_class:
            picked[k].append(item["genotypes"])
    genotypes = [g for k in range(num_classes) for g in picked[k]]
    labels = [k for k in range(num_classes) for _ in picked[k]]
    return torch.stack(genotypes), torch.tensor(labels)


def train_centralized(
    train_set: Dataset,
    val_set: Dataset,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = True,
    privacy: PrivacyConfig | None = None,
) -> dict[str, float]:
    """Train the autoencoder, fix the latent scale, train the LDM, save and plot.

    With ``privacy.mode == "dp_sgd"`` both phases train with Opacus DP-SGD (Poisson batches,
    per-sample clipping and noise) and one accountant covers both; the epsilon spent is in
    the metrics and privacy_ledger.json (the adversarial term is not supported then).

    Writes ``out_dir``/model (``G2IPipeline`` folder), samples.png, real.png,
    ae_loss.{csv,png}, ldm_loss.{csv,png} and metrics.json. Returns the metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = get_device(train_cfg.device)
    seed_everything(seed)
    sample = train_set[0]
    if sample["image"].shape[0] != 1:
        raise ValueError(
            f"the models take one slice per item, got images {tuple(sample['image'].shape)}"
            "; prepare the data with data.n_slices=1"
        )
    image_size = sample["image"].shape[-1]
    n_snps = sample["genotypes"].numel()
    val_loader = DataLoader(val_set, shuffle=False, batch_size=train_cfg.batch_size)
    metrics: dict[str, float] = {}
    dp = privacy is not None and privacy.mode == "dp_sgd"
    if privacy is not None and privacy.mode not in ("none", "dp_sgd"):
        raise ValueError(
            f"privacy.mode={privacy.mode!r} needs a federation; centralized training supports "
            "none or dp_sgd"
        )
    if dp and train_cfg.adv_weight > 0:
        raise ValueError("privacy.mode=dp_sgd does not support train.adv_weight > 0")
    # One accountant over both phases; target_epsilon is spread over all their steps.
    ledger = PrivacyLedger()
    expected = privacy.expected_batch_size if dp else 0

    def per_epoch(phase: str) -> int:
        return batches_per_epoch(len(train_set), expected or train_cfg.batch_for(phase))

    total_steps = planned_steps(
        per_epoch("ae"), train_cfg.ae_epochs, train_cfg.max_steps_ae
    ) + planned_steps(per_epoch("ldm"), train_cfg.ldm_epochs, train_cfg.max_steps_ldm)
    # The same core a federated site calls, on the pooled data, as one "site" and one round.
    core = partial(
        train_local,
        dataset=train_set,
        cfg=train_cfg,
        device=device,
        privacy=privacy,
        ledger=ledger,
        total_dp_steps=total_steps,
        ema=train_cfg.ema,
        progress=progress,
    )

    ae = build_autoencoder(model_cfg, image_size).to(device)
    before = evaluate_autoencoder(ae, val_loader, device)
    disc = PatchDiscriminator() if train_cfg.adv_weight > 0 else None
    result = core("ae", ae, seed=derive_seed(seed, CENTRAL_SITE, "ae", 0), discriminator=disc)
    ae_history = result.history
    metrics["ae_train_s"] = result.metrics["seconds"]
    raw_ae = evaluate_autoencoder(ae, val_loader, device)
    if result.ema_weights is not None:
        ae.load_state_dict(result.ema_weights)
    after = evaluate_autoencoder(ae, val_loader, device)
    metrics.update(ae_val_psnr_before=before["psnr"], ae_val_psnr=after["psnr"])
    metrics.update(ae_val_psnr_raw=raw_ae["psnr"])
    metrics.update(ae_val_ssim=after["ssim"], ae_val_l1=after["l1"])
    scale_loader = make_loader(train_set, train_cfg.batch_size, seed)
    scale = scale_factor_from_moments(
        *latent_moments(ae, scale_loader, device, train_cfg.scale_batches, seed)
    )
    set_scale_factor(ae, scale)
    metrics["latent_scale_factor"] = scale
    log.info(
        "autoencoder: val PSNR %.2f -> %.2f dB, scale %.4f", before["psnr"], after["psnr"], scale
    )

    names = panel_names(train_set)
    denoiser = build_denoiser(model_cfg, n_snps, latent_size(ae), names).to(device)
    scheduler = build_noise_scheduler(model_cfg)
    metrics["ldm_val_mse_before"] = evaluate_ldm(denoiser, ae, scheduler, val_loader, device)["mse"]
    result = core(
        "ldm",
        denoiser,
        seed=derive_seed(seed, CENTRAL_SITE, "ldm", 0),
        ae=ae,
        scheduler=scheduler,
        cond_dropout=model_cfg.cond_dropout,
        genotype_dropout=model_cfg.genotype_dropout,
    )
    ldm_history = result.history
    metrics["ldm_train_s"] = result.metrics["seconds"]
    if dp:
        ledger.save(out / "privacy_ledger.json")
        metrics.update(
            dp_epsilon=ledger.epsilon(privacy.delta),
            dp_delta=privacy.delta,
            dp_steps=float(ledger.steps),
            dp_noise_multiplier=result.metrics["dp-noise-multiplier"],
        )
    metrics["ldm_val_mse_raw"] = evaluate_ldm(denoiser, ae, scheduler, val_loader, device)["mse"]
    if result.ema_weights is not None:
        denoiser.load_state_dict(result.ema_weights)
    # condition_use's "mse" is the final model's held-out MSE (ldm_val_mse).
    use = condition_use(
        denoiser, ae, scheduler, val_loader, device, e4_columns_of(val_set), seed=seed
    )
    metrics.update({f"ldm_val_{k.replace('-', '_')}": v for k, v in use.items()})

    pipeline = G2IPipeline.from_parts(
        ae,
        denoiser,
        scheduler,
        **sampler_defaults(model_cfg),
        allele_freqs=allele_frequencies(train_set),
        panel=dataset_panel(train_set),
    )
    pipeline.save_pretrained(out / "model")
    genotypes, labels = conditions_per_class(
        val_set, train_cfg.samples_per_class, model_cfg.num_classes
    )
    images = generate(pipeline, genotypes, labels, seed=seed, progress=progress)
    names = CLASS_NAMES[: model_cfg.num_classes]
    title = f"{model_cfg.variant}: {model_cfg.sampler}, {model_cfg.sample_steps} steps"
    save_sample_grid(images, labels, out / "samples.png", names, title=title)
    real = torch.stack([val_set[i]["image"] for i in range(len(val_set))])
    real_labels = torch.stack([val_set[i]["label"] for i in range(len(val_set))])
    save_sample_grid(real[:64], real_labels[:64], out / "real.png", names, title="real (val)")
    save_loss_curves(ae_history, out / "ae_loss", keys=("loss", "l1"))
    save_loss_curves(ldm_history, out / "ldm_loss", keys=("mse",))
    metrics.update(
        ae_steps=float(len(ae_history)),
        ldm_steps=float(len(ldm_history)),
        ldm_train_mse_first=_mean_of(ldm_history[:20], "mse"),
        ldm_train_mse_last=_mean_of(ldm_history[-20:], "mse"),
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _mean_of(records: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in records if key in r]
    return sum(values) / max(1, len(values))
