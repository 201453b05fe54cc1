"""A trained Gene-to-Image model as one folder: ``G2IPipeline.save_pretrained(path)``.

The folder holds ``vae/`` (with the latent scale factor in its ``config.json``), ``unet/``,
``snp_encoder/`` (absent for the label-only variant), ``scheduler/`` and ``model_index.json``
with the variant, the label mode, the default sampler settings, the SNP panel (names in
column order and counted alleles, :mod:`g2i_models.panel`) and the library versions, so
``G2IPipeline.from_pretrained(path)`` rebuilds it without the training code.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Sequence
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from conf.schema import ModelConfig
from g2i_models.autoencoder import decode_latents
from g2i_models.condition_embedding import ConditionEmbedding
from g2i_models.diffusion import sample_latents, sampling_scheduler
from g2i_models.panel import Panel, check_panel
from g2i_models.snp_encoder import SNPEncoder
from g2i_models.unet import ConditionalDenoiser


def library_versions() -> dict[str, str]:
    """Versions written into every saved model (self-describing artefacts)."""
    import g2i_models

    return {
        "g2i_models": g2i_models.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


class G2IPipeline(DiffusionPipeline):
    """Autoencoder + SNP encoder + UNet + scheduler; ``__call__`` generates slices.

    Shapes: genotypes (B, n_snps) int64 in {0, 1, 2, 3}; labels (B,) int64; images out
    (B, 1, H, W) float32 in [0, 1].
    """

    model_cpu_offload_seq = "snp_encoder->cond_embedding->unet->vae"
    # None for the label-only variant / the variants without a condition embedding.
    _optional_components = ["snp_encoder", "cond_embedding"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        snp_encoder: SNPEncoder | None,
        variant: str = "g2i_label_attn",
        label_mode: str = "embed",
        num_classes: int = 3,
        sampler: str = "ddim",
        sample_steps: int = 50,
        guidance_scale: float = 1.0,
        allele_freqs: list[float] | None = None,
        versions: dict[str, str] | None = None,
        genotype_pool: str = "tokens",
        panel: Panel | None = None,
        cond_embedding: ConditionEmbedding | None = None,
        genotype_guidance_scale: float | None = None,
    ) -> None:
        super().__init__()
        if panel is not None:
            check_panel(panel, None if snp_encoder is None else int(snp_encoder.config.n_snps))
        self.register_modules(
            vae=vae,
            unet=unet,
            scheduler=scheduler,
            snp_encoder=snp_encoder,
            cond_embedding=cond_embedding,
        )
        self.register_to_config(
            variant=variant,
            label_mode=label_mode,
            num_classes=num_classes,
            sampler=sampler,
            sample_steps=sample_steps,
            guidance_scale=guidance_scale,
            allele_freqs=allele_freqs,
            versions=versions or library_versions(),
            genotype_pool=genotype_pool,
            panel=panel,
            genotype_guidance_scale=genotype_guidance_scale,
        )
        # Validates the variant against the components (an SNP encoder when genotypes are used).
        self.denoiser = ConditionalDenoiser(
            unet, snp_encoder, variant, label_mode, num_classes, genotype_pool, cond_embedding
        )

    @classmethod
    def from_parts(
        cls,
        vae: AutoencoderKL,
        denoiser: ConditionalDenoiser,
        scheduler: SchedulerMixin,
        **config: Any,
    ) -> G2IPipeline:
        """Assemble a pipeline from a trained autoencoder and denoiser (in ``config``: the
        sampler defaults sampler, sample_steps, guidance_scale; allele_freqs; panel)."""
        return cls(
            vae=vae,
            unet=denoiser.unet,
            scheduler=scheduler,
            snp_encoder=denoiser.snp_encoder,
            variant=denoiser.variant,
            label_mode=denoiser.label_mode,
            num_classes=denoiser.num_classes,
            genotype_pool=denoiser.genotype_pool,
            cond_embedding=denoiser.cond_embedding,
            **config,
        )

    @property
    def scale_factor(self) -> float:
        """The latent scale factor 1/std(z) stored with the autoencoder."""
        return float(self.vae.config.scaling_factor)

    def sample_genotypes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, n_snps) genotypes drawn from the stored risk-allele frequencies (HWE)."""
        freqs = self.config.allele_freqs
        if freqs is None:
            raise ValueError("this model stores no allele frequencies; pass genotypes")
        p = torch.tensor(freqs, dtype=torch.float32).expand(n, 2, -1)
        return torch.bernoulli(p, generator=generator).sum(1).long()

    @torch.no_grad()
    def __call__(
        self,
        genotypes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_images: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pt",
        progress: bool = False,
        genotype_guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Generate images (B, 1, H, W) in [0, 1], or scaled latents if output_type="latent".

        B is taken from genotypes, labels or ``num_images``; unset sampler settings come from
        the stored config. ``generator``: one for the batch, or a list of B (one per image,
        see ``generate``).
        """
        cfg = self.config
        device = self.vae.device
        ref = genotypes if genotypes is not None else labels
        b = num_images if ref is None else ref.shape[0]
        if b is None:
            raise ValueError("pass genotypes, labels or num_images")
        to = {"device": device}
        genotypes = None if genotypes is None else genotypes.to(**to)
        labels = None if labels is None else labels.to(**to)
        latent_size = self.unet.config.sample_size
        shape = (b, self.unet.config.out_channels, latent_size, latent_size)
        scheduler = sampling_scheduler(self.scheduler, sampler or cfg.sampler)
        # Eval mode: the autoencoder decodes differently in train mode.
        self.denoiser.eval()
        self.vae.eval()
        z = sample_latents(
            self.denoiser,
            scheduler,
            shape,
            genotypes,
            labels,
            num_inference_steps or cfg.sample_steps,
            cfg.guidance_scale if guidance_scale is None else guidance_scale,
            generator,
            progress,
            genotype_guidance_scale=(
                cfg.get("genotype_guidance_scale")
                if genotype_guidance_scale is None
                else genotype_guidance_scale
            ),
        )
        if output_type == "latent":
            return z
        return decode_latents(self.vae, z)


def sampler_defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The sampler settings a saved pipeline carries (``from_parts`` keywords)."""
    return {
        "sampler": cfg.sampler,
        "sample_steps": cfg.sample_steps,
        "guidance_scale": cfg.guidance_scale,
        "genotype_guidance_scale": cfg.genotype_guidance_scale,
    }


GENERATE_BATCH_SIZE = 32


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed of its own for image ``index`` of a ``generate`` call seeded ``seed``."""
    digest = hashlib.sha256(f"g2i-image|{int(seed)}|{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate(
    pipeline: G2IPipeline,
    genotypes: torch.Tensor | None,
    labels: torch.Tensor | None,
    seed: int = 0,
    batch_size: int = GENERATE_BATCH_SIZE,
    image_seeds: Sequence[int] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Images (B, 1, H, W) in [0, 1] for genotypes (B, n_snps) and labels (B,), seeded,
    sampled ``batch_size`` images at a time.

    Image i has a CPU generator of its own, seeded ``image_seeds[i]`` (default
    ``image_seed(seed, i)``), that draws its initial noise and its sampler's step noise: it
    comes out the same (to float round-off) whatever ``batch_size``, whatever else is in
    its batch, and on CPU or GPU. Pass one image seed to several images (e.g. the same
    subject at e4 = 0, 1, 2) to give them the same noise. Other keyword arguments go to
    ``G2IPipeline.__call__`` (``num_images`` when there are neither genotypes nor labels).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ref = genotypes if genotypes is not None else labels
    n = int(kwargs.pop("num_images", 0) or 0) if ref is None else int(ref.shape[0])
    if n < 1:
        raise ValueError("pass genotypes, labels or num_images >= 1")
    seeds = [image_seed(seed, i) for i in range(n)] if image_seeds is None else image_seeds
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} image seeds for {n} images")
    chunks = []
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[part]]
        chunks.append(
            pipeline(
                None if genotypes is None else genotypes[part],
                None if labels is None else labels[part],
                num_images=len(generators),
                generator=generators,
                **kwargs,
            )
        )
    return torch.cat(chunks)
