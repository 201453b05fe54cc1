"""What a site does for each federated phase, as plain functions over numpy/torch objects.

The ClientApp turns messages into these calls; nothing here knows Flower. Everything a site
keeps between messages lives on disk under its work folder (deployment runs every message in
a fresh process): the prepared dataset, and per run the privacy ledger and the frozen
autoencoder of phase 2.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from client.count_release import CountNoise
from conf.schema import (
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    PrivacyConfig,
    QCConfig,
    TrainConfig,
)
from contract.messages import QCDecision, SyntheticSet
from contract.wire import Metric, flatten_metrics, load_wire, to_wire
from g2i_eval.classifier import downstream_comparison
from g2i_eval.memorisation import aggregate_audit, autoencoder_features, memorisation_audit
from g2i_models.autoencoder import (
    build_autoencoder,
    latent_moments,
    latent_size,
    set_scale_factor,
)
from g2i_models.baseline import e4_columns_of
from g2i_models.device import get_device
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.local_training import derive_seed, make_loader, train_local
from g2i_models.privacy import PrivacyLedger
from g2i_models.train import condition_use, evaluate_autoencoder
from g2i_models.unet import build_denoiser
from preprocessing.dataset import LABELS, MISSING_CODE, load_site_dataset, prepare_site
from preprocessing.federated_qc import FederatedQCResult, SiteCounts, released_site_counts
from preprocessing.site import site_genotype_panel


@dataclass(frozen=True)
class Site:
    """Folders of one site for one run."""

    data_dir: Path  # what the hospital holds (read only)
    work_dir: Path  # prepared dataset, QC'd genotypes
    run_dir: Path  # per-run state: frozen autoencoder, optimiser state, synthetic set
    ledger_path: Path | None = None  # the privacy ledger; None = one per run (simulation)

    @property
    def prepared(self) -> Path:
        return self.work_dir / "prepared"

    @property
    def ledger(self) -> Path:
        return self.ledger_path or self.run_dir / "privacy_ledger.json"


def resolve_site(
    data_dir: Path, work_root: str, run_key: str, lifetime_ledger: bool = False
) -> Site:
    """``work_root`` empty: ``<data_dir>/../prepared/<site>``; else ``<work_root>/<site>``.

    ``lifetime_ledger``: one privacy ledger for the site's whole life (deployment), in its
    work folder, whatever run the server names; otherwise one per run (a simulated site
    lives for one run).
    """
    base = (
        Path(work_root) / data_dir.name
        if work_root
        else data_dir.parent / "prepared" / data_dir.name
    )
    run = hashlib.sha256(run_key.encode()).hexdigest()[:12]
    ledger = base / "privacy" / "ledger.json" if lifetime_ledger else None
    return Site(data_dir, base, base / "runs" / run, ledger)


# ---- phase 0: federated QC, then the local dataset -------------------------------------


def qc_counts(
    site: Site, qc: QCConfig, min_cell: int = 1, noise: CountNoise | None = None
) -> tuple[SiteCounts, list[str]]:
    """Per-SNP genotype counts after the site's --mind (aggregate only), with no count
    behind fewer than ``min_cell`` subjects (``noise``: Gaussian noise first, then the rule
    on the noisy sizes); and the notes naming what was suppressed or noised."""
    if noise is None:
        return released_site_counts(site.data_dir / "genotypes", qc, min_cell)
    counts, notes = released_site_counts(
        site.data_dir / "genotypes", qc, min_cell, noise.multiplier, noise.rng
    )
    return counts, [*notes, f"site epsilon now {noise.epsilon:.3f}"]


def suppress_counts(counts: Mapping[str, int], min_cell: int) -> tuple[dict[str, int], list[str]]:
    """Counts of subjects with every value in (0, min_cell) sent as 0, and their names."""
    small = sorted(k for k, v in counts.items() if 0 < int(v) < min_cell)
    return {k: 0 if k in small else int(v) for k, v in counts.items()}, small


def prepare(
    site: Site,
    data: DataConfig,
    decision: FederatedQCResult | None,
    seed: int,
    min_cell: int = 1,
    noise: CountNoise | None = None,
) -> tuple[dict[str, int], list[str], np.ndarray, list[str]]:
    """Apply the keep-list, build the panel and the slice cache.

    Returns:
        counts (subjects per split, exclusions), SNP names, the per-diagnosis genotype
        counts of the training split: (3, n_snps, 4) int64 over codes 0/1/2/missing, zero
        for a diagnosis with fewer than ``min_cell`` training subjects, and the names of
        what was suppressed. With ``noise`` every count is noised first (a subject moves
        one cell per SNP and at most two split counts: sensitivity sqrt(n_snps + 2)) and the
        small-cell rule reads the noisy values.
    """
    source = partial(site_genotype_panel, work_dir=site.work_dir, qc=data.qc, decision=decision)
    key = QCDecision(decision).digest() if decision is not None else ""
    manifest = prepare_site(
        site.data_dir, site.prepared, data, source, seed=seed, progress=False, inputs_key=key
    )
    ds = load_site_dataset(site.prepared, "train")
    geno = np.load(site.prepared / "genotypes.npy")
    per_dx = np.zeros((len(LABELS), geno.shape[1], 4), dtype=np.int64)
    for s in ds.subjects:
        per_dx[s["label"], np.arange(geno.shape[1]), geno[s["row"]]] += 1
    counts = {
        f"n-{split}": sum(s["split"] == split for s in manifest["subjects"])
        for split in ("train", "val", "test")
    }
    counts["n-excluded"] = len(manifest["exclusions"])
    suppressed = []
    if noise is not None:
        sensitivity = float(np.sqrt(geno.shape[1] + 2))
        per_dx = noise.gaussian(per_dx, sensitivity)
        noisy = noise.gaussian(list(counts.values()), sensitivity)
        counts = {k: int(v) for k, v in zip(counts, noisy, strict=True)}
        suppressed.append(noise.note(sensitivity))
        # A diagnosis's noisy size: its per-SNP totals, averaged (post-processing).
        group_sizes = np.rint(per_dx.sum(axis=2).mean(axis=1)).astype(np.int64)
    else:
        group_sizes = np.bincount([s["label"] for s in ds.subjects], minlength=len(LABELS))
    for k, n in enumerate(group_sizes):
        if 0 < n < min_cell:
            per_dx[k] = 0
            suppressed.append(f"per-dx {LABELS[k]}: {n} < {min_cell} subjects, suppressed")
    counts, small = suppress_counts(counts, min_cell)
    suppressed += [f"{k}: fewer than {min_cell}, sent as 0" for k in small]
    return counts, list(manifest["snp_names"]), per_dx, suppressed


class PanelView(Dataset):
    """A prepared dataset restricted to the federation's SNP panel, in the server's order;
    SNPs this site lacks are given as missing."""

    def __init__(self, base: Dataset, snp_names: list[str], panel: list[str]) -> None:
        self.base = base
        self.snp_names = list(panel)
        pos = {s: i for i, s in enumerate(snp_names)}
        self.index = torch.tensor([pos.get(s, -1) for s in panel])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        g = item["genotypes"]
        item["genotypes"] = torch.where(
            self.index >= 0, g[self.index.clamp(min=0)], torch.tensor(MISSING_CODE)
        )
        return item


def site_dataset(site: Site, split: str, panel: list[str]) -> Dataset:
    ds = load_site_dataset(site.prepared, split)
    return PanelView(ds, ds.snp_names, panel)




# ---- phases 1 and 2: local training -----------------------------------------------------


@dataclass(frozen=True)
class RoundSpec:
    """What the server asks of one local run."""

    phase: str  # "ae" or "ldm"
    panel: list[str]
    proximal_mu: float
    seed: int  # the run's seed; the site derives its own stream per (site, phase, round)
    total_dp_steps: int  # over the whole federation, for a target epsilon
    round: int = 0  # the federation's round of this phase (1-based; 0 outside rounds)

    def stream(self, site: Site) -> int:
        """This site's seed for this phase and round (``derive_seed``)."""
        return derive_seed(self.seed, site.data_dir.name, self.phase, self.round)


def _local_train(
    site: Site,
    phase: str,
    model: torch.nn.Module,
    spec: RoundSpec,
    train_cfg: TrainConfig,
    privacy: PrivacyConfig,
    **kwargs: Any,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One round of the shared training core at this site: optimiser state kept on the
    site's disk between rounds, the privacy ledger loaded and saved around the run."""
    dp = privacy.mode == "dp_sgd"
    ledger_path = site.ledger
    ledger = PrivacyLedger.load(ledger_path) if dp else None
    result = train_local(
        phase,
        model,
        site_dataset(site, "train", spec.panel),
        train_cfg,
        get_device(train_cfg.device),
        spec.stream(site),
        privacy=privacy,
        ledger=ledger,
        total_dp_steps=spec.total_dp_steps,
        state_dir=site.run_dir / "optimizer",
        proximal_mu=spec.proximal_mu,
        **kwargs,
    )
    full = to_wire(result.weights)
    # A subset run sends back what it trained only; the frozen rest is the server's already.
    keys = result.trained if phase == "ldm" and privacy.trainable != "all" else list(full)
    arrays = {k: full[k] for k in keys}
    metrics = dict(result.metrics)
    metrics["wire-bytes"] = float(sum(a.nbytes for a in arrays.values()))
    metrics["wire-bytes-full"] = float(sum(a.nbytes for a in full.values()))
    if ledger is not None:
        ledger.save(ledger_path)
        metrics.update(
            {
                "epsilon": ledger.epsilon(privacy.delta),
                "delta": privacy.delta,
                "noise-multiplier": metrics.pop("dp-noise-multiplier"),
            }
        )
    return arrays, metrics


class MissingGlobalModel(RuntimeError):
    """A round sent only the trained subset to a site that holds no whole global model."""


def global_denoiser(
    site: Site, arrays: Mapping[str, np.ndarray], keep: bool = False
) -> dict[str, np.ndarray]:
    """The whole global denoiser: a round sends all of it (the first) or, when the sites
    train a subset, that subset only (the frozen rest never changes). The site lays what it
    receives over the whole it keeps on its disk, and with ``keep`` stores the result."""
    path = site.run_dir / "denoiser.npz"
    held: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            held = {k: z[k] for k in z.files}
    whole = {**held, **{k: np.asarray(v) for k, v in arrays.items()}}
    if keep:
        site.run_dir.mkdir(parents=True, exist_ok=True)
        np.savez(path, **whole)
    return whole


def _load_denoiser(
    site: Site, denoiser: torch.nn.Module, arrays: Mapping[str, np.ndarray], keep: bool = False
) -> None:
    whole = global_denoiser(site, arrays, keep)
    missing = [k for k in denoiser.state_dict() if k not in whole]
    if missing:
        raise MissingGlobalModel(
            f"site {site.data_dir.name}: received {len(arrays)} of the denoiser's tensors and "
            f"holds no whole global model ({len(missing)} missing, e.g. {missing[0]}); a site "
            "training a subset must take part from the phase's first round "
            "(federation.fraction_train=1)"
        )
    load_wire(denoiser, {k: whole[k] for k in denoiser.state_dict()})


def train_autoencoder_round(
    site: Site,
    arrays: Mapping[str, np.ndarray],
    spec: RoundSpec,
    data: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    privacy: PrivacyConfig,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    ae = build_autoencoder(model_cfg, data.image_size)
    load_wire(ae, arrays)
    return _local_train(site, "ae", ae, spec, train_cfg, privacy)


def latent_stats(
    site: Site,
    ae_arrays: Mapping[str, np.ndarray],
    spec: RoundSpec,
    data: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    moments: bool = True,
) -> dict[str, float]:
    """Keep the global autoencoder for phase 2 and return (count, sum, sum of squares) of the
    site's training latents: the server derives the scale factor 1/std(z) from the totals.
    ``moments`` False (a public-stage autoencoder, its scale known): zeros, nothing of the
    site's data."""
    device = get_device(train_cfg.device)
    ae = build_autoencoder(model_cfg, data.image_size)
    load_wire(ae, ae_arrays)
    site.run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(site.run_dir / "autoencoder.npz", **{k: np.asarray(v) for k, v in ae_arrays.items()})
    if not moments:
        return {"count": 0.0, "sum": 0.0, "sum-sq": 0.0, "num-examples": 0.0}
    loader = make_loader(site_dataset(site, "train", spec.panel), train_cfg.batch_size, spec.seed)
    count, total, total_sq = latent_moments(ae, loader, device, train_cfg.scale_batches, spec.seed)
    return {
        "count": float(count),
        "sum": float(total),
        "sum-sq": float(total_sq),
        "num-examples": float(len(loader.dataset)),
    }


def frozen_autoencoder(
    site: Site, data: DataConfig, model_cfg: ModelConfig, scale: float
) -> torch.nn.Module:
    path = site.run_dir / "autoencoder.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no global autoencoder yet; phase 1 has not finished")
    ae = build_autoencoder(model_cfg, data.image_size)
    with np.load(path) as z:
        load_wire(ae, {k: z[k] for k in z.files})
    set_scale_factor(ae, scale)
    return ae


def train_ldm_round(
    site: Site,
    arrays: Mapping[str, np.ndarray],
    spec: RoundSpec,
    scale: float,
    data: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    privacy: PrivacyConfig,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    ae = frozen_autoencoder(site, data, model_cfg, scale)
    denoiser = build_denoiser(model_cfg, len(spec.panel), latent_size(ae), spec.panel)
    _load_denoiser(site, denoiser, arrays, keep=privacy.trainable != "all")
    return _local_train(
        site,
        "ldm",
        denoiser,
        spec,
        train_cfg,
        privacy,
        ae=ae,
        scheduler=build_noise_scheduler(model_cfg),
        cond_dropout=model_cfg.cond_dropout,
        genotype_dropout=model_cfg.genotype_dropout,
    )


def evaluate_round(
    site: Site,
    arrays: Mapping[str, np.ndarray],
    spec: RoundSpec,
    scale: float,
    data: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
) -> dict[str, float]:
    """Global model on the site's validation split: metrics only."""
    device = get_device(train_cfg.device)
    ds = site_dataset(site, "val", spec.panel)
    if len(ds) == 0:
        # Never the training split under a validation name: the server drops this reply.
        raise ValueError(
            f"site {site.data_dir.name}: the validation split is empty; raise "
            "data.val_fraction or add subjects to evaluate this site"
        )
    loader = DataLoader(ds, batch_size=train_cfg.batch_size)
    if spec.phase == "ae":
        ae = build_autoencoder(model_cfg, data.image_size)
        load_wire(ae, arrays)
        m = evaluate_autoencoder(ae, loader, device)
    else:
        ae = frozen_autoencoder(site, data, model_cfg, scale)
        denoiser = build_denoiser(model_cfg, len(spec.panel), latent_size(ae), spec.panel)
        _load_denoiser(site, denoiser, arrays)
        scheduler = build_noise_scheduler(model_cfg)
        # Seeded by the run only: comparable across rounds and sites.
        # Held-out MSE (seeded by the run only: comparable across rounds and sites) and its
        # rise when a condition is shuffled, from one set of paired draws.
        m = condition_use(denoiser, ae, scheduler, loader, device, e4_columns_of(ds))
    return {k: float(v) for k, v in m.items()}


class SyntheticSetMismatch(RuntimeError):
    """The audit request names a synthetic set other than the one the site received."""


def store_synthetic(site: Site, synthetic: SyntheticSet) -> str:
    """Keep the shared synthetic set at the site for augmentation and the audit; returns
    the digest recorded on receipt (the audit runs only on the set with this digest)."""
    out = site.run_dir / "synthetic"
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "synthetic.npz", **synthetic.arrays())
    (out / "panel.json").write_text(json.dumps(synthetic.panel))
    digest = synthetic.digest()
    (out / "receipt.json").write_text(json.dumps({"digest": digest}) + "\n")
    return digest


def received_digest(site: Site) -> str:
    path = site.run_dir / "synthetic" / "receipt.json"
    return str(json.loads(path.read_text())["digest"]) if path.exists() else ""


def load_synthetic(site: Site) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared synthetic set stored at the site: images (N, 1, H, W), labels (N,)."""
    path = site.run_dir / "synthetic" / "synthetic.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the site has not received the synthetic set")
    with np.load(path) as z:
        return torch.from_numpy(z["images"]).float(), torch.from_numpy(z["labels"]).long()


def split_images(site: Site, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, S, S) and labels (N,) of one prepared split (no subject IDs)."""
    ds = load_site_dataset(site.prepared, split)
    if len(ds) == 0:
        raise ValueError(f"{site.prepared}: the {split!r} split is empty")
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([it["image"] for it in items])
    if images.shape[1] != 1:
        raise ValueError(f"{site.prepared}: {images.shape[1]} slices per subject; need 1")
    return images, torch.stack([it["label"] for it in items])


# ---- after generation: downstream classifier and memorisation audit --------------------

def evaluation_from_settings(settings: Mapping[str, Any]) -> EvaluationConfig:
    """The classifier settings the server sent (``EvaluateSyntheticRequest.settings``) over
    the defaults."""
    base = EvaluationConfig()
    values = {k: type(getattr(base, k))(v) for k, v in settings.items()}
    if "classifier_seeds" in values:
        values["classifier_seeds"] = [int(s) for s in values["classifier_seeds"]]
    return replace(base, **values)


def evaluate_synthetic(
    site: Site,
    evaluation: EvaluationConfig,
    data: DataConfig,
    model_cfg: ModelConfig,
    device: str,
    digest: str,
    audit: bool = True,
) -> dict[str, dict[str, Metric]]:
    """Downstream classifier (train split, scored on the test split) with and without the
    shared synthetic set, and the memorisation audit of that set against the training images
    (test images as the baseline; features: the global autoencoder's encoder means).

    Runs only on the set the site received, named by the digest it recorded on receipt
    (``digest``); raises ``SyntheticSetMismatch`` otherwise.

    Returns two flat metric dicts, ``downstream`` and ``memorisation`` (empty when ``audit``
    is off): aggregates only (``aggregate_audit``), no per-image distance or index. The
    flagged images stay in ``<run>/synthetic/audit.json`` at the site.
    """
    stored = received_digest(site)
    if not stored or digest != stored:
        raise SyntheticSetMismatch(
            "evaluate_synthetic names a synthetic set this site did not receive in this run; "
            "the site audits only the set the federation shared with it"
        )
    synth_x, synth_y = load_synthetic(site)
    train_x, train_y = split_images(site, "train")
    test_x, test_y = split_images(site, "test")
    downstream = downstream_comparison(
        train_x, train_y, test_x, test_y, synth_x, synth_y, evaluation, device
    )
    if not audit:
        return {"downstream": flatten_metrics(downstream), "memorisation": {}}
    ae = frozen_autoencoder(site, data, model_cfg, 1.0)  # the scale does not touch the encoder
    full = memorisation_audit(
        synth_x,
        train_x,
        test_x,
        autoencoder_features(ae, get_device(device)),
        evaluation.audit_quantile,
    )
    (site.run_dir / "synthetic" / "audit.json").write_text(json.dumps(full, indent=1) + "\n")
    return {
        "downstream": flatten_metrics(downstream),
        "memorisation": flatten_metrics(aggregate_audit(full)),
    }
