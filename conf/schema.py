"""Typed configuration: one dataclass per concern, registered with Hydra's ConfigStore.

The YAML files under ``conf/<group>/`` extend these schemas, so a typo in an override
(``cohort.n_sitez=4``) or a wrong type (``cohort.n_sites=many``) fails at composition time.
Each module receives only its own part (``CohortConfig``, ``DataConfig``...), never the whole
tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING


class PrivacyMode(StrEnum):
    """``none``; ``dp_sgd``: local DP-SGD at each site (Opacus); ``central_dp``: clipping at
    the sites, Gaussian noise on the aggregate at the server (Flower's wrapper)."""

    none = "none"
    dp_sgd = "dp_sgd"
    central_dp = "central_dp"


class LabelMode(StrEnum):
    """How the diagnosis enters the UNet: ``concat`` (paper) or ``embed`` (authors' code)."""

    concat = "concat"
    embed = "embed"


class StrategyName(StrEnum):
    """The Flower strategies ``server.strategy.build_strategy`` can build."""

    FedAvg = "FedAvg"
    FedProx = "FedProx"
    FedAdam = "FedAdam"
    FedYogi = "FedYogi"
    FedAdagrad = "FedAdagrad"
    FedAvgM = "FedAvgM"
    FedMedian = "FedMedian"
    FedTrimmedAvg = "FedTrimmedAvg"
    Krum = "Krum"


class ConfigConflictError(ValueError):
    """Two settings that cannot hold together (the message names both and the fix)."""


@dataclass
class CohortConfig:
    """The synthetic multi-site cohort (``g2i-simulate``)."""

    n_sites: int = 3
    # Subjects per site; a list gives each site its own size (non-IID), a shorter list is cycled.
    subjects_per_site: list[int] = field(default_factory=lambda: [60, 72, 48])
    voxel_size_mm: float = 2.0
    n_background_snps: int = 3000
    # Fraction of background SNPs placed on chromosome X (males hemizygous).
    chrx_fraction: float = 0.01
    # Catalog of AD candidate SNPs; empty = the copy shipped with the package.
    snp_catalog: str = ""
    # Population allele frequency of the APOE alleles e2, e3, e4.
    apoe_freqs: list[float] = field(default_factory=lambda: [0.08, 0.77, 0.15])
    # Target diagnosis proportions CN, MCI, AD over the whole cohort (paper: 291/438/182).
    dx_proportions: list[float] = field(default_factory=lambda: [0.32, 0.48, 0.20])
    # Per-site shift of the disease liability (non-IID label mix), cycled over sites.
    site_liability_shift: list[float] = field(default_factory=lambda: [-0.35, 0.05, 0.45])
    # Liability model: per APOE e4 copy, per SD of the polygenic score, per SD of age.
    effect_e4: float = 0.65
    effect_prs: float = 0.35
    effect_age: float = 0.30
    # Anatomy: neurodegeneration severity per unit genetic liability, per SD of age, per DX.
    atrophy_genetic: float = 0.6
    atrophy_age: float = 0.45
    atrophy_dx: list[float] = field(default_factory=lambda: [0.0, 0.6, 1.4])
    atrophy_noise_sd: float = 0.35
    # Ventricle border shift in mm per unit severity (dilation of the template ventricles).
    ventricle_mm_per_severity: float = 1.6
    # Cortical GM loss (sulcal widening) in mm per unit severity, and medial-temporal GM loss
    # (fraction of hippocampal-region GM signal) per unit severity.
    cortical_mm_per_severity: float = 0.45
    mtl_loss_per_severity: float = 0.12
    # Nuisance.
    jitter_rotation_deg: float = 2.0
    jitter_translation_mm: float = 2.0
    bias_field_strength: float = 0.12
    noise_sd: float = 0.025
    site_intensity_scale: list[float] = field(default_factory=lambda: [1000.0, 1350.0, 820.0])
    site_contrast_gamma: list[float] = field(default_factory=lambda: [1.0, 0.85, 1.15])
    # Stored orientation per site (cycled): nibabel axis codes, e.g. RAS, LAS, LPS, LPI.
    site_orientation: list[str] = field(default_factory=lambda: ["RAS", "LAS", "LPS"])
    # Planted QC failures, as fractions of background SNPs / of subjects.
    geno_missing_rate: float = 0.001
    planted_high_missing_frac: float = 0.02
    planted_rare_frac: float = 0.02
    planted_monomorphic_frac: float = 0.01
    planted_hwe_frac: float = 0.01
    planted_bad_sample_frac: float = 0.02
    # Options used by tests of the genotype pipeline (site indices, 0-based).
    strand_flip_sites: list[int] = field(default_factory=list)
    allele_swap_sites: list[int] = field(default_factory=list)
    no_apoe_sites: list[int] = field(default_factory=list)
    # Fraction of panel SNPs flipped / swapped at those sites.
    panel_flip_frac: float = 0.3
    write_mri: bool = True
    workers: int = 2


@dataclass
class QCConfig:
    """PLINK-style genotype QC thresholds (the paper's values)."""

    mind: float = 0.05
    geno: float = 0.05
    maf: float = 0.01
    hwe: float = 1e-5
    hwe_midp: bool = False
    hwe_include_nonctrl: bool = False


@dataclass
class DataConfig:
    """Where the cohort lives and how sites turn it into training slices."""

    root: str = "data/cohort"
    image_size: int = 64
    # Axial level in MNI millimetres (through the lateral ventricles) and slab size.
    slice_z_mm: float = 18.0
    n_slices: int = 1
    slice_spacing_mm: float = 2.0
    intensity_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    normalization: str = "percentile"
    # "site": prepared site folders (preprocessing.load_site_dataset); "synthetic": the
    # built-in synthetic test dataset of g2i_models (no preparation needed).
    source: str = "site"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    qc: QCConfig = field(default_factory=QCConfig)
    # A scan whose correlation with the MNI152 template (over its brain) is below this is
    # excluded as not registered to MNI; registered scans give ~0.9, a 25 mm shift ~0.35.
    mni_min_correlation: float = 0.5
    # Diagnosis column ("auto": DX, else DX_bl) and vocabulary -> CN / MCI / AD.
    dx_column: str = "auto"
    dx_map: dict[str, str] = field(
        default_factory=lambda: {
            "CN": "CN",
            "SMC": "CN",
            "EMCI": "MCI",
            "LMCI": "MCI",
            "MCI": "MCI",
            "AD": "AD",
            "Dementia": "AD",
        }
    )
    # Where sites cache prepared datasets and run state: empty = "prepared/<site>" beside
    # the site folders; otherwise an absolute folder (relative paths would depend on the
    # working directory of Flower's worker processes).
    cache_dir: str = ""


@dataclass
class ModelConfig:
    """Autoencoder, SNP encoder and conditional UNet sizes; one of the paper's variants."""

    # g2i_plus (ours: per-SNP value embeddings, cross-attention and the pooled genotype added
    # to the timestep embedding, diagnosis embedded); the paper's four models: ldm_label
    # (label only), g2i (genotype, cross-attention), g2i_label_noattn (pooled
    # genotype + label, no cross-attention), g2i_label_attn (genotype + label, cross-attention).
    variant: str = "g2i_plus"
    # How the diagnosis enters the UNet: "concat" (paper) or "embed" (authors' code).
    label_mode: LabelMode = LabelMode.embed
    # The genotype's timestep-embedding route (g2i_plus, g2i_label_noattn): what it pools
    # ("tokens": the encoder's output; "values": the value embeddings, additive in the SNPs)
    # and how its projection starts ("zero" or "default").
    genotype_pool: str = "tokens"
    genotype_time_init: str = "default"
    # Loci (panel names) whose values get their own code in that route, and its width.
    major_loci: list[str] = field(default_factory=lambda: ["APOE_e4"])
    locus_embed_dim: int = 16
    # g2i_plus: a major locus's codes, "cumulative" (v copies = the codes of 0..v summed) or
    # "value" (one free code per value); g2i_models/condition_embedding.py has the measurements.
    locus_coding: str = "cumulative"
    num_classes: int = 3
    # Autoencoder: len(ae_channels) - 1 downsamplings (3 levels = latents at 1/4 size).
    ae_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    latent_channels: int = 3
    ae_norm_groups: int = 16
    ae_layers_per_block: int = 1
    # UNet; small configs need 8-16 norm groups (32 groups on 32 channels cancel the timestep).
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    unet_norm_groups: int = 8
    unet_layers_per_block: int = 1
    # Which UNet levels get cross-attention to the SNP tokens (the mid block always does).
    unet_attention_levels: list[bool] = field(default_factory=lambda: [False, True, True])
    unet_head_dim: int = 8
    # SNP transformer encoder.
    snp_embed_dim: int = 64
    snp_depth: int = 2
    snp_heads: int = 4
    snp_mlp_ratio: int = 2
    snp_dropout: float = 0.0
    # Probability of training with the null condition (classifier-free guidance).
    cond_dropout: float = 0.1
    # Diffusion process (DDPM training) and the sampler used by default at generation.
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # What the denoiser predicts: "epsilon" (the paper's eq. 11), "v_prediction" or "sample";
    # "" = the variant's: epsilon for the paper's four, v_prediction for g2i_plus.
    prediction_type: str = ""
    # Rescale the betas so that the last training step holds no signal (zero terminal SNR):
    # the sampler starts from pure noise, which then matches what the denoiser saw at t = T - 1.
    # Needs v_prediction (an epsilon model cannot recover z0 at zero SNR). None = the variant's:
    # on for g2i_plus with v_prediction, off for the paper's four. Measured in the README
    # ("where the generated effects shrink"): at 600 LDM steps it nearly doubles the e4 effect.
    rescale_betas_zero_snr: bool | None = None
    sampler: str = "ddim"
    sample_steps: int = 50
    guidance_scale: float = 1.5
    # The genotype's own guidance scale (None = guidance_scale, one formula for all conditions;
    # g2i_models/diffusion.py::sample_latents) and the training's genotype-only dropout that it
    # needs (the null genotype with the diagnosis kept).
    genotype_guidance_scale: float | None = None
    genotype_dropout: float = 0.0
    # A public-stage model folder (``g2i-pretrain``): the federation's autoencoder and UNet
    # start from it and the autoencoder phase is skipped; empty = train both from scratch.
    pretrained: str = ""


@dataclass
class TrainConfig:
    """Optimisation settings shared by centralized and federated training."""

    batch_size: int = 8
    # The LDM phase's batch (0 = batch_size). Measured on the paper-sized cohort (CPU, one
    # thread, 600 LDM steps, training seeds 0-2, README "Batch size and learning rate of the
    # LDM"): batch 16 costs 2.5x batch 4's time a step and raised the mean generated e4 ratio
    # from 0.55 to 0.62 (0.72 with lr_ldm 2e-3); the autoencoder reaches a given PSNR sooner
    # at batch 4, so the two phases have batches of their own.
    batch_size_ldm: int = 0
    lr_ae: float = 1e-3
    lr_ldm: float = 5e-4
    weight_decay: float = 0.0
    # Epochs per call of train_autoencoder / train_ldm (a federated round = one call);
    # max_steps_* > 0 stops a call earlier.
    ae_epochs: int = 20
    ldm_epochs: int = 60
    max_steps_ae: int = 0
    max_steps_ldm: int = 0
    # Min-SNR-gamma weighting of the LDM loss (0 = off, the plain mean over timesteps).
    min_snr_gamma: float = 0.0
    # LDM training timesteps t = floor(T * u ** power), u uniform (1 = uniform t; below 1
    # favours the noisy end).
    timestep_power: float = 1.0
    # Wall-time caps of one local run in seconds (0 = none): the study's equal-wall-time cells.
    max_seconds_ae: float = 0.0
    max_seconds_ldm: float = 0.0
    grad_clip: float = 1.0
    kl_weight: float = 1e-6
    # Optional patch-adversarial term of the autoencoder loss (0 = off) and its start step.
    adv_weight: float = 0.0
    adv_start_step: int = 0
    # An EMA of the weights over a local run's steps. Off: measured on the default cohort
    # (240 AE / 480 LDM steps, centralized) the EMA at 0.999 lags the raw weights (AE val PSNR
    # 22.8 vs 23.4 dB, LDM val MSE 0.090 vs 0.061); with it off, centralized and federated
    # runs both use the raw weights.
    ema: bool = False
    ema_decay: float = 0.999
    # "auto" = bf16 autocast on CUDA (fp16 with loss scaling where bf16 is unsupported), fp32
    # elsewhere; "bf16", "fp16" or "no" to force.
    mixed_precision: str = "auto"
    # Channels-last inputs of the convolutional networks, and torch.compile of the
    # autoencoder's encoder / decoder and the UNet (eager when compilation fails; never under
    # DP-SGD, whose per-sample hooks need the eager modules): GPU speed-ups, off by default.
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    device: str = "auto"
    num_workers: int = 0
    # Batches used to estimate the latent scale factor 1/std(z).
    scale_batches: int = 16
    # Sample grids written by the centralized baseline.
    samples_per_class: int = 8

    def batch_for(self, phase: str) -> int:
        """The batch size of a phase ("ae" or "ldm")."""
        return self.batch_size_ldm if phase == "ldm" and self.batch_size_ldm else self.batch_size


@dataclass
class FederationConfig:
    """Rounds per phase and the aggregation strategy."""

    strategy: StrategyName = StrategyName.FedAvg
    rounds_ae: int = 2
    rounds_ldm: int = 2
    min_sites: int = 2
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    # Which rounds send the global model out again for validation: every N-th round and the
    # last of each phase (0: the last only). Each evaluation is a second download of the
    # weights the sites just received (benchmarks/bytes_per_round.py).
    evaluate_every: int = 0
    proximal_mu: float = 0.0
    # The server learning rate of FedAdam / FedYogi / FedAdagrad (FedAvgM steps at 1.0).
    server_lr: float = 1e-2
    # FedAvgM's server momentum: the global model moves by the averaged update plus this times
    # the previous move (Flower's own default, 0, would make FedAvgM plain FedAvg).
    server_momentum: float = 0.9
    # Synthetic slices generated per diagnosis after training and shared with the sites.
    synthetic_per_class: int = 8


@dataclass
class PrivacyConfig:
    """Differential privacy: none, local DP-SGD (Opacus) or central DP (Flower wrappers)."""

    mode: PrivacyMode = PrivacyMode.none
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: float = 0.0
    epsilon_budget: float = 0.0
    # Which parameters of the denoiser train ("all", or "conditioning": the SNP encoder, the
    # condition embeddings and the UNet's cross-attention, the rest frozen); with
    # "conditioning" only that subset travels back from a site.
    trainable: str = "all"
    # Augmentation multiplicity: (noise, t) draws per example, averaged into one per-example
    # loss before DP-SGD clips it (one example, one per-sample gradient).
    augment_multiplicity: int = 1
    # Expected Poisson batch of DP-SGD (sample rate = 1 / (n // expected)); 0 = train.batch_size.
    expected_batch_size: int = 0
    # Gaussian noise on every count a site releases (census, QC counts, per-diagnosis
    # genotype counts): std = this x the release's L2 sensitivity to one subject; 0 = exact
    # counts (after cell suppression). Each release is charged to the site's privacy ledger.
    count_noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if self.count_noise_multiplier < 0:
            raise ConfigConflictError("privacy.count_noise_multiplier must be >= 0")
        if self.trainable not in TRAINABLE_SUBSETS:
            raise ConfigConflictError(
                f"privacy.trainable={self.trainable!r}; choose one of {list(TRAINABLE_SUBSETS)}"
            )
        if self.augment_multiplicity < 1 or self.expected_batch_size < 0:
            raise ConfigConflictError(
                "privacy.augment_multiplicity must be >= 1 and privacy.expected_batch_size >= 0"
            )


# The parameter subsets a local run can train (``g2i_models.trainable``).
TRAINABLE_SUBSETS = ("all", "conditioning")


@dataclass
class EvaluationConfig:
    """Image metrics, genotype-effect recovery, downstream classifier, memorisation audit."""

    # Features for FID / KID and the feature-space memorisation audit: "in_domain" (a small
    # CNN trained on the real training slices, see g2i_eval.features) or "inception"
    # (Inception-v3; needs ``inception_weights``, a torchvision state-dict file).
    feature_extractor: str = "in_domain"
    inception_weights: str = ""
    # A saved in-domain extractor folder to reuse; empty = train one and save it in the run.
    in_domain_dir: str = ""
    in_domain_epochs: int = 15
    # Generated images per diagnosis scored against the real test images.
    samples_per_class: int = 32
    # Random pairs of generated images for the paper's between-sample SSIM / MS-SSIM.
    diversity_pairs: int = 200
    kid_subset_size: int = 50
    # Genotype-effect recovery: images per (APOE e4 count, diagnosis) and bootstrap draws.
    effect_samples: int = 16
    effect_bootstrap: int = 1000
    # Downstream CN / MCI / AD classifier (the paper's 2-layer CNN), real vs real +
    # synthetic topped up to ``classifier_per_class`` images per class (paper: 500).
    classifier_per_class: int = 500
    # At most this many epochs; early stopping on a stratified validation part of the real
    # training images after ``classifier_patience`` epochs without a lower validation loss.
    classifier_epochs: int = 60
    classifier_patience: int = 8
    classifier_val_fraction: float = 0.2
    classifier_batch_size: int = 32
    classifier_lr: float = 1e-3
    # The gain is a paired difference over these seeds with a 95% CI (at least 5 for a CI
    # worth reading).
    classifier_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # Memorisation audit: a synthetic image is flagged when its nearest training image is
    # closer than this quantile of the real test-to-train nearest-neighbour distances.
    audit_quantile: float = 0.05
    # Truth folder of a g2i-simulate cohort; empty = <data.root>/truth when it exists.
    truth_dir: str = ""


@dataclass
class SitePolicy:
    """What a site allows, fixed by the site (its SuperNode's node config or the policy file
    it names), never by the server. In simulation it comes from the run's config."""

    # DP mode every training round must use and the least noise multiplier it accepts.
    privacy_mode: PrivacyMode = PrivacyMode.dp_sgd
    min_noise_multiplier: float = 1.0
    # Epsilon budget and delta over the site's whole lifetime (every run, every phase).
    epsilon_budget: float = 10.0
    delta: float = 1e-5
    # The QC thresholds behind every count the site releases (--mind fixes the sample set).
    qc: QCConfig = field(default_factory=QCConfig)
    # Splits and their seed: the training set behind released counts is the site's choice.
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    # A released count describing fewer subjects than this is suppressed or merged.
    min_cell_size: int = 10
    # Gaussian noise on every released count, std = this x the release's L2 sensitivity to
    # one subject (0 = exact counts); each release is charged to the lifetime ledger.
    count_noise_multiplier: float = 0.0
    # The memorisation audit of the shared synthetic set: on or off, at most once per run,
    # at most ``audit_max_runs`` times over the site's lifetime, with this quantile.
    audit: bool = True
    audit_max_runs: int = 20
    audit_quantile: float = 0.05
    # Where the site writes (prepared data, ledgers, logs); empty = beside its data.
    work_path: str = ""
    # Training hyper-parameters the server may override (Hydra keys; ``group.*`` = all).
    allowed_overrides: list[str] = field(
        default_factory=lambda: [
            "train.*",
            "model.*",
            "federation.*",
            "evaluation.*",
            "seed",
            "name",
            "run_dir",
            "data.image_size",
            "data.root",
            "privacy",
            "privacy.noise_multiplier",
            "privacy.max_grad_norm",
            "privacy.trainable",
            "privacy.augment_multiplicity",
            "privacy.expected_batch_size",
        ]
    )

    def __post_init__(self) -> None:
        if self.min_noise_multiplier < 0 or self.epsilon_budget < 0:
            raise ConfigConflictError("policy: min_noise_multiplier and epsilon_budget >= 0")
        if self.count_noise_multiplier < 0:
            raise ConfigConflictError("policy.count_noise_multiplier must be >= 0")
        if not 0 < self.delta < 1:
            raise ConfigConflictError(f"policy.delta must be in (0, 1), got {self.delta}")
        if self.min_cell_size < 1:
            raise ConfigConflictError("policy.min_cell_size must be at least 1")
        if not 0 < self.audit_quantile < 1:
            raise ConfigConflictError("policy.audit_quantile must be in (0, 1)")
        if self.privacy_mode == PrivacyMode.dp_sgd and self.min_noise_multiplier <= 0:
            raise ConfigConflictError(
                "policy: privacy_mode=dp_sgd needs min_noise_multiplier > 0 (0 adds no noise)"
            )


def check_config(cfg: Any) -> None:
    """Cross-field checks of a composed root config (raises ``ConfigConflictError``)."""
    privacy, fed = cfg.privacy, cfg.federation
    fedprox = fed.strategy == StrategyName.FedProx or fed.proximal_mu > 0
    if privacy.mode == PrivacyMode.dp_sgd and fedprox:
        # The proximal term is added to the loss, outside Opacus's per-sample gradients:
        # DP-SGD would drop it silently.
        raise ConfigConflictError(
            "privacy=dp_sgd with FedProx (federation.strategy=FedProx or "
            "federation.proximal_mu > 0): the proximal term is not part of the clipped "
            "per-sample gradient; use FedAvg with DP-SGD, or privacy=central_dp with FedProx"
        )
    if privacy.mode == PrivacyMode.central_dp and fed.strategy in (
        StrategyName.FedMedian,
        StrategyName.FedTrimmedAvg,
        StrategyName.Krum,
    ):
        raise ConfigConflictError(
            f"privacy=central_dp with federation.strategy={fed.strategy}: the Gaussian "
            "mechanism's sensitivity bound holds for a mean of clipped updates only; use a "
            "mean-based strategy (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM)"
        )
    if fed.strategy == StrategyName.FedAvgM and not 0.0 <= fed.server_momentum < 1.0:
        raise ConfigConflictError(
            f"federation.strategy=FedAvgM with federation.server_momentum={fed.server_momentum}: "
            "the momentum must be in [0, 1) (0.9 is the usual choice)"
        )
    if (
        privacy.mode != PrivacyMode.none
        and privacy.noise_multiplier <= 0
        and (privacy.target_epsilon <= 0)
    ):
        raise ConfigConflictError(
            f"privacy={privacy.mode} with privacy.noise_multiplier={privacy.noise_multiplier}: "
            "set a positive noise multiplier or privacy.target_epsilon"
        )
    if privacy.mode != PrivacyMode.none and not 0 < privacy.delta < 1:
        raise ConfigConflictError(f"privacy.delta must be in (0, 1), got {privacy.delta}")


@dataclass
class Config:
    """The root configuration composed from the groups."""

    data: DataConfig = MISSING
    cohort: CohortConfig = MISSING
    model: ModelConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = MISSING
    privacy: PrivacyConfig = MISSING
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    name: str = "default"
    seed: int = 0
    run_dir: str = "runs/${name}"


@dataclass
class SimulateConfig:
    """The root configuration of ``g2i-simulate``."""

    cohort: CohortConfig = MISSING
    output_dir: str = "data/cohort"
    seed: int = 0
    overwrite: bool = False


@dataclass
class StudyConfig:
    """``g2i-study``: model variants x centralized / federated x DP off / on."""

    # The experiment every cell starts from, and overrides applied to every cell.
    experiment: str = "fed_tiny"
    overrides: list[str] = field(default_factory=list)
    variants: list[str] = field(
        default_factory=lambda: ["ldm_label", "g2i", "g2i_label_noattn", "g2i_label_attn"]
    )
    modes: list[str] = field(default_factory=lambda: ["centralized", "federated"])
    privacy: list[str] = field(default_factory=lambda: ["none", "dp_sgd"])
    # Extra overrides of the DP cells (noise, clipping, budget).
    dp_overrides: list[str] = field(default_factory=list)
    # The modes and variants that get DP cells (empty = all of ``modes`` / ``variants``).
    dp_modes: list[str] = field(default_factory=list)
    dp_variants: list[str] = field(default_factory=list)
    # A public-stage model folder (``g2i-pretrain``) the DP cells start from
    # (``model.pretrained``); empty = the DP cells train from scratch.
    pretrained: str = ""
    n_sites: int = 3
    # Seconds one federated cell may take.
    federation_timeout_s: int = 3600


@dataclass
class StudyRoot:
    """The root configuration of ``g2i-study``."""

    study: StudyConfig = MISSING
    data_root: str = "data/cohort"
    out_dir: str = "runs/study"
    seed: int = 0
    # Skip cells whose evaluation.json exists (rerun a study to finish it).
    resume: bool = True


_GROUPS: dict[str, Any] = {
    "data": DataConfig,
    "cohort": CohortConfig,
    "model": ModelConfig,
    "federation": FederationConfig,
    "privacy": PrivacyConfig,
    "study": StudyConfig,
}


def register_configs() -> None:
    """Register the schemas so the YAML files can extend them (idempotent)."""
    # Imported here: modules that only need the dataclasses (the QC CLI) skip Hydra's import.
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(name="base_simulate", node=SimulateConfig)
    cs.store(name="base_study_root", node=StudyRoot)
    for group, node in _GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=node)
