"""The public stage: the autoencoder and the UNet trained without private data, and the
federation's starting model seeded from them.

``g2i-pretrain data.root=PUBLIC run_dir=OUT`` trains, on a public image collection the
coordinator holds (here: a synthetic cohort of another seed), the autoencoder and then a
null-conditioned denoiser: every item's genotype is the null genotype and its diagnosis the
null class (``NullConditions``), so neither is used. The result is an ordinary model folder
(``G2IPipeline.save_pretrained``) plus ``pretraining.json`` (what made it) and
``grad_norms.json``: the per-example gradient norms of the conditioning subset on the public
images, with random conditions and the run's draws per example, from which to choose the
DP-SGD clipping norm (public data: this costs the sites no privacy).

``model.pretrained=OUT`` makes it the federation's starting point (``seed_from_pretrained``):
the autoencoder and its scale as saved, the UNet as saved, the conditioning components where
they fit the federation's panel (per-SNP rows matched by SNP name), and every condition
started at the null condition (``start_at_null``), so round 0 is the public model.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch.utils.data import Dataset

from conf.schema import ModelConfig, PrivacyConfig, TrainConfig
from g2i_models.autoencoder import (
    build_autoencoder,
    encode_latents,
    latent_moments,
    latent_size,
    scale_factor_from_moments,
    set_scale_factor,
)
from g2i_models.device import get_device, seed_everything
from g2i_models.diffusion import build_noise_scheduler, diffusion_loss, diffusion_process
from g2i_models.local_training import derive_seed, make_loader, panel_names, train_local
from g2i_models.panel import panel_config
from g2i_models.pipeline import G2IPipeline, library_versions, sampler_defaults
from g2i_models.snp_encoder import MISSING_GENOTYPE, N_GENOTYPE_TOKENS, NULL_GENOTYPE
from g2i_models.trainable import trainable_names
from g2i_models.unet import ConditionalDenoiser, build_denoiser
from preprocessing.panel import APOE_COLUMN

log = logging.getLogger(__name__)

PUBLIC_SITE = "public"


class PretrainedModelError(ValueError):
    """A ``model.pretrained`` folder that is missing or does not fit the run's model."""


class NullConditions(Dataset):
    """A dataset's images with the null genotype (``n_snps`` columns) and the null diagnosis
    (index ``num_classes``): nothing but the images reaches training."""

    def __init__(self, base: Dataset, n_snps: int, num_classes: int) -> None:
        self.base = base
        self.genotypes = torch.full((n_snps,), NULL_GENOTYPE, dtype=torch.long)
        self.label = torch.tensor(num_classes, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.base[i]["image"], "genotypes": self.genotypes, "label": self.label}


@torch.no_grad()
def start_at_null(denoiser: ConditionalDenoiser) -> None:
    """Every condition's embedding set to the null condition's: the label rows, each major
    locus's value rows and each SNP's value rows. The denoiser then predicts, for any
    condition, what the public (null-conditioned) model predicts; private training moves the
    rows apart."""
    ce = denoiser.cond_embedding
    if ce is not None and ce.label_embed is not None:
        ce.label_embed.weight[:] = ce.label_embed.weight[-1]
    if ce is not None and ce.locus_embed is not None:
        rows = ce.locus_embed.weight.view(-1, N_GENOTYPE_TOKENS, ce.locus_embed.weight.shape[1])
        null = rows[:, NULL_GENOTYPE : NULL_GENOTYPE + 1].clone()
        rows[:] = null
        if ce.config.locus_coding == "cumulative":
            # v copies sum the rows of 0..v: the rows above 0 start at zero, so every value
            # starts at the null code (not v + 1 times it).
            rows[:, 1:MISSING_GENOTYPE] = 0
    class_embedding = getattr(denoiser.unet, "class_embedding", None)
    if isinstance(class_embedding, torch.nn.Embedding):
        class_embedding.weight[:] = class_embedding.weight[-1]
    if denoiser.snp_encoder is not None:
        w = denoiser.snp_encoder.genotype_embed.weight
        rows = w.view(-1, N_GENOTYPE_TOKENS, w.shape[1])
        rows[:] = rows[:, NULL_GENOTYPE : NULL_GENOTYPE + 1]


def _match_snp_rows(
    name: str, value: torch.Tensor, target: torch.Tensor, public: list[str], panel: list[str]
) -> torch.Tensor | None:
    """A per-SNP table of the public model (one row, or ``N_GENOTYPE_TOKENS`` rows, per SNP)
    laid out for the federation's panel: rows of SNPs in both panels copied by name, the
    others the mean of the public rows; None when ``name`` is no per-SNP table."""
    if not name.startswith(("snp_encoder.snp_embed.", "snp_encoder.genotype_embed.")):
        return None
    per = value.shape[0] // len(public)
    if per * len(public) != value.shape[0] or target.shape[0] != per * len(panel):
        return None
    rows = value.view(len(public), per, -1)
    where = {s: i for i, s in enumerate(public)}
    out = rows.mean(dim=0, keepdim=True).repeat(len(panel), 1, 1)
    for j, snp in enumerate(panel):
        if snp in where:
            out[j] = rows[where[snp]]
    return out.view_as(target)


def seed_from_pretrained(
    pipeline: G2IPipeline, denoiser: ConditionalDenoiser, panel: Sequence[str]
) -> list[str]:
    """Load the public model into ``denoiser`` (built for the federation's ``panel``): the
    UNet exactly, the SNP encoder and condition embeddings where they fit (per-SNP rows by
    SNP name); then ``start_at_null``. Returns the names of the tensors left at their fresh
    initialisation.

    Raises:
        PretrainedModelError: the UNet does not fit (other sizes or variant).
    """
    public = list((pipeline.config.get("panel") or {}).get("snp_names") or [])
    source = pipeline.denoiser.state_dict()
    target = denoiser.state_dict()
    unet_keys = [k for k in target if k.startswith("unet.")]
    bad = [k for k in unet_keys if k not in source or source[k].shape != target[k].shape]
    if bad:
        raise PretrainedModelError(
            f"the pretrained UNet does not fit this model ({len(bad)} tensors differ, first "
            f"{bad[0]}); pretrain with the same model.* settings (variant, sizes)"
        )
    fresh: list[str] = []
    loaded: dict[str, torch.Tensor] = {}
    for k, t in target.items():
        v = source.get(k)
        matched = None if v is None or not public else _match_snp_rows(k, v, t, public, panel)
        if matched is not None:
            loaded[k] = matched
        elif v is not None and v.shape == t.shape:
            loaded[k] = v
        else:
            fresh.append(k)
    denoiser.load_state_dict({**target, **loaded})
    start_at_null(denoiser)
    return fresh


def check_diffusion_process(pipeline: G2IPipeline, cfg: ModelConfig) -> None:
    """The public model must have been trained on the run's diffusion process (what the
    denoiser predicts, and the noise schedule): weights trained for one are wrong for the
    other without any error. Raises PretrainedModelError naming both and the fix."""
    kind, zero_snr = diffusion_process(cfg)
    sc = pipeline.scheduler.config
    theirs = (sc.get("prediction_type", "epsilon"), bool(sc.get("rescale_betas_zero_snr", False)))
    if theirs != (kind, zero_snr):
        raise PretrainedModelError(
            f"the pretrained model predicts {theirs[0]} (zero terminal SNR: {theirs[1]}) but "
            f"this run's model.variant={cfg.variant} predicts {kind} (zero terminal SNR: "
            f"{zero_snr}); pretrain again with this run's model settings, or set "
            f"model.prediction_type={theirs[0]} "
            f"model.rescale_betas_zero_snr={str(theirs[1]).lower()} for this run"
        )


def load_pretrained(path: str | Path) -> G2IPipeline:
    """The public-stage model folder, with a message naming the fix when it is not one."""
    p = Path(path)
    if not (p / "model_index.json").is_file():
        raise PretrainedModelError(
            f"model.pretrained={p}: no model_index.json; pass the folder g2i-pretrain wrote "
            "(its run_dir/model)"
        )
    return G2IPipeline.from_pretrained(p)


def pretrained_autoencoder(
    pipeline: G2IPipeline, cfg: ModelConfig, image_size: int
) -> AutoencoderKL:
    """The public autoencoder, checked against the run's model settings."""
    ae = build_autoencoder(cfg, image_size)
    try:
        ae.load_state_dict(pipeline.vae.state_dict())
    except RuntimeError as exc:
        raise PretrainedModelError(
            "the pretrained autoencoder does not fit this model; pretrain with the same "
            "model.ae_* settings and data.image_size"
        ) from exc
    set_scale_factor(ae, float(pipeline.vae.config.scaling_factor))
    return ae


def gradient_norms(
    denoiser: ConditionalDenoiser,
    ae: AutoencoderKL,
    scheduler: SchedulerMixin,
    dataset: Dataset,
    device: torch.device,
    draws: int = 1,
    n: int = 64,
    seed: int = 0,
    cond_dropout: float = 0.0,
) -> dict[str, float]:
    """Quantiles of the per-example gradient norm of the conditioning subset, one example at
    a time, its loss the mean over ``draws`` (noise, t) draws (as DP-SGD clips it). The
    images are ``dataset``'s; the conditions are random (diagnoses uniform, genotypes
    uniform over 0/1/2): the public data has none."""
    names = set(trainable_names(denoiser, "conditioning"))
    params = [p for k, p in denoiser.named_parameters() if k in names]
    denoiser.to(device).train()
    ae.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    n_snps = int(denoiser.snp_encoder.config.n_snps) if denoiser.snp_encoder is not None else 1
    norms = []
    for i in torch.randperm(len(dataset), generator=g)[:n].tolist():
        x = dataset[i]["image"][None].to(device)
        genotypes = torch.randint(0, 3, (1, n_snps), generator=g).to(device)
        labels = torch.randint(0, denoiser.num_classes, (1,), generator=g).to(device)
        with torch.no_grad():
            z0 = encode_latents(ae, x, mode=True)
        loss = diffusion_loss(denoiser, scheduler, z0, genotypes, labels, cond_dropout, draws=draws)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        sq = sum(float(gr.pow(2).sum()) for gr in grads if gr is not None)
        norms.append(sq**0.5)
    t = torch.tensor(norms)
    quantiles = {f"q{int(q * 100):02d}": float(t.quantile(q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
    return {"n": float(len(norms)), "draws": float(draws), "mean": float(t.mean()), **quantiles}


def pretrain_public(
    train_set: Dataset,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    seed: int = 0,
    privacy: PrivacyConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the autoencoder, fix the latent scale, train the null-conditioned denoiser on
    ``train_set``'s images only; save the model folder ``out_dir/model`` with
    ``pretraining.json`` and ``grad_norms.json`` (draws per example from
    ``privacy.augment_multiplicity``). Returns what ``pretraining.json`` holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = get_device(train_cfg.device)
    seed_everything(seed)
    image_size = int(train_set[0]["image"].shape[-1])
    names = panel_names(train_set) or [APOE_COLUMN]
    public = NullConditions(train_set, len(names), model_cfg.num_classes)
    ae = build_autoencoder(model_cfg, image_size).to(device)
    ae_run = train_local(
        "ae",
        ae,
        public,
        train_cfg,
        device,
        derive_seed(seed, PUBLIC_SITE, "ae", 0),
        progress=progress,
    )
    loader = make_loader(public, train_cfg.batch_size, seed)
    scale = scale_factor_from_moments(
        *latent_moments(ae, loader, device, train_cfg.scale_batches, seed)
    )
    set_scale_factor(ae, scale)
    denoiser = build_denoiser(model_cfg, len(names), latent_size(ae), names).to(device)
    scheduler = build_noise_scheduler(model_cfg)
    ldm_run = train_local(
        "ldm",
        denoiser,
        public,
        train_cfg,
        device,
        derive_seed(seed, PUBLIC_SITE, "ldm", 0),
        ae=ae,
        scheduler=scheduler,
        progress=progress,
    )
    pipeline = G2IPipeline.from_parts(
        ae,
        denoiser,
        scheduler,
        **sampler_defaults(model_cfg),
        panel=panel_config(names),
    )
    pipeline.save_pretrained(out / "model")
    start_at_null(denoiser)
    draws = privacy.augment_multiplicity if privacy is not None else 1
    norms = gradient_norms(denoiser, ae, scheduler, train_set, device, draws, seed=seed)
    (out / "model" / "grad_norms.json").write_text(json.dumps(norms, indent=2) + "\n")
    info = {
        "stage": "public",
        "conditions": "null genotype and null diagnosis for every image (none used)",
        "n_images": len(train_set),
        "image_size": image_size,
        "latent_scale_factor": scale,
        "ae": {k: ae_run.metrics[k] for k in ("loss", "steps", "seconds")},
        "ldm": {k: ldm_run.metrics[k] for k in ("loss", "steps", "seconds")},
        "seed": seed,
        "versions": library_versions(),
    }
    (out / "model" / "pretraining.json").write_text(json.dumps(info, indent=2) + "\n")
    return {**info, "grad_norms": norms}


def main(argv: Sequence[str] | None = None) -> int:
    """``g2i-pretrain [hydra overrides...]``: the public stage on ``data.root``'s training
    split, written to ``run_dir/model`` (pass it as ``model.pretrained``)."""
    from conf.loader import load_config, to_object
    from g2i_models.cli import setup_logging
    from g2i_models.datasets import DataSourceError, load_split

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print("usage: g2i-pretrain data.root=PUBLIC run_dir=DIR [KEY=VALUE ...] [--help]\n")
        print(__doc__)
        return 0
    setup_logging()
    cfg = load_config(None, args)
    try:
        train_set = load_split(to_object(cfg.data), "train", cfg.seed)
    except DataSourceError as err:
        print(f"g2i-pretrain: {err}", file=sys.stderr)
        return 2
    info = pretrain_public(
        train_set,
        to_object(cfg.model),
        to_object(cfg.train),
        cfg.run_dir,
        int(cfg.seed),
        privacy=to_object(cfg.privacy),
    )
    print(json.dumps(info, indent=2))
    print(f"public model written to {Path(cfg.run_dir) / 'model'}: pass model.pretrained=<it>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
