"""Image-quality metrics of generated slices: PSNR / SSIM / MS-SSIM (torchmetrics functional)
and FID / KID (torchmetrics classes).

Images are (N, 1, H, W) float32 in [0, 1]; labels (N,) int64 (CN 0, MCI 1, AD 2). PSNR uses
data_range 1 and is averaged over per-image values (identical images give inf). SSIM uses
the standard 11-pixel Gaussian window (sigma 1.5); MS-SSIM uses :func:`ms_ssim_settings`.
FID and KID are computed on features from a :class:`g2i_eval.features.FeatureExtractor`,
and every FID / KID value is reported with that extractor's ``name``: numbers from
different extractors are not comparable.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from conf.schema import EvaluationConfig
from g2i_eval.features import FeatureExtractor, extract_features
from g2i_models.plots import CLASS_NAMES

# Wang et al. (2003) weights of the five MS-SSIM scales, finest first.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_SSIM_CHUNK = 256  # image pairs per SSIM call in the best-match search


def ms_ssim_settings(image_size: int) -> dict[str, Any]:
    """MS-SSIM arguments for torchmetrics that work at ``image_size``.

    The standard setting (5 scales, 11-pixel Gaussian window, sigma 1.5) needs >= 176 px in
    torchmetrics. Smaller images keep as many scales as fit, coarsest dropped first, trying
    the 11-pixel window (sigma 1.5) and then a 7-pixel one (sigma 1.0) at each number of
    scales; a setting fits when torchmetrics accepts it and the coarsest scale is at least
    as wide as the window. The kept betas are the first ones of Wang et al., renormalised to
    sum to 1 when scales were dropped. Results: 256 px -> 5 scales, window 11; 64 px -> 4
    scales, window 7; 32 px -> 3 scales, window 7; 16 px -> 2 scales, window 7. Negative
    contrast terms are clipped to 0 (torchmetrics' ``normalize="relu"``) so unrelated images
    give 0, not NaN.
    """
    for n_scales in range(len(MS_SSIM_BETAS), 1, -1):
        for kernel, sigma in ((11, 1.5), (7, 1.0)):
            coarsest = image_size // 2 ** (n_scales - 1)
            fits_torchmetrics = image_size // max(1, n_scales - 1) ** 2 > kernel - 1
            if fits_torchmetrics and image_size >= 2**n_scales and coarsest >= kernel:
                betas = MS_SSIM_BETAS[:n_scales]
                if n_scales < len(MS_SSIM_BETAS):
                    betas = tuple(b / sum(betas) for b in betas)
                return {
                    "betas": betas,
                    "kernel_size": kernel,
                    "sigma": sigma,
                    "normalize": "relu",
                }
    raise ValueError(f"no MS-SSIM setting fits {image_size}-px images (needs >= 14 px)")


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"expected two (N, C, H, W) batches of one shape, got {x.shape}, {y.shape}"
        )


def _per_pair(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair PSNR, SSIM and MS-SSIM of aligned batches (N, 1, H, W) -> each (N,)."""
    _check_pair(x, y)
    x, y = x.float(), y.float()
    return {
        "psnr": peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": structural_similarity_index_measure(x, y, data_range=1.0, reduction="none"),
        "ms_ssim": multiscale_structural_similarity_index_measure(
            x, y, data_range=1.0, reduction="none", **ms_ssim_settings(x.shape[-1])
        ),
    }


def _mean(values: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v.double().mean()) for k, v in values.items()}


def diversity(images: torch.Tensor, n_pairs: int, seed: int) -> dict[str, float]:
    """Between-sample SSIM, MS-SSIM and PSNR over random pairs of distinct images.

    ``n_pairs`` unordered pairs (i != j) are drawn without replacement (all pairs when fewer
    exist). Lower means more diverse samples (the paper's down-arrow metrics).
    """
    n = len(images)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 images, got {n}")
    rows, cols = np.triu_indices(n, k=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(n_pairs, len(rows)), replace=False)
    i, j = torch.from_numpy(rows[pick]), torch.from_numpy(cols[pick])
    return {**_mean(_per_pair(images[i], images[j])), "n_pairs": float(len(pick))}


def _best_ssim_match(image: torch.Tensor, candidates: torch.Tensor) -> int:
    """Index of the candidate (M, 1, H, W) with the highest SSIM to ``image`` (1, H, W)."""
    scores = [
        structural_similarity_index_measure(
            image.expand_as(chunk), chunk, data_range=1.0, reduction="none"
        )
        for chunk in candidates.float().split(_SSIM_CHUNK)
    ]
    return int(torch.cat(scores).argmax())


def against_real(
    generated: torch.Tensor,
    gen_labels: torch.Tensor,
    real: torch.Tensor,
    real_labels: torch.Tensor,
    seed: int,
) -> dict[str, float]:
    """PSNR / SSIM / MS-SSIM of generated images against real images of the same diagnosis.

    Two pairings: each generated image against a random real image of its diagnosis (drawn
    with ``numpy.random.default_rng(seed)``, in the order of ``generated``): "psnr", "ssim",
    "ms_ssim"; and against its most similar real image of its diagnosis (highest SSIM):
    "best_match_psnr", "best_match_ssim", "best_match_ms_ssim". Generated images whose
    diagnosis has no real image are skipped; "n_compared" counts the rest.
    """
    rng = np.random.default_rng(seed)
    random_idx, best_idx, kept = [], [], []
    for k, label in enumerate(gen_labels.tolist()):
        pool = torch.nonzero(real_labels == label).flatten()
        if len(pool) == 0:
            continue
        kept.append(k)
        random_idx.append(int(pool[rng.integers(len(pool))]))
        best_idx.append(int(pool[_best_ssim_match(generated[k], real[pool])]))
    if not kept:
        raise ValueError("no generated image has a real image of the same diagnosis")
    gen = generated[kept]
    return {
        **_mean(_per_pair(gen, real[random_idx])),
        **_mean(_per_pair(gen, real[best_idx]), prefix="best_match_"),
        "n_compared": float(len(kept)),
    }


class _Precomputed(nn.Module):
    """Identity 'feature network' so torchmetrics scores features extracted once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _fid(real_f: torch.Tensor, fake_f: torch.Tensor) -> float:
    fid = FrechetInceptionDistance(feature=_Precomputed(real_f.shape[1]))
    fid.update(real_f, real=True)
    fid.update(fake_f, real=False)
    return float(fid.compute())


def _fid_kid_features(
    real_f: torch.Tensor, fake_f: torch.Tensor, name: str, kid_subset_size: int, seed: int
) -> dict[str, Any]:
    n_real, n_fake = len(real_f), len(fake_f)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"FID / KID need >= 2 real and fake images, got {n_real} and {n_fake}")
    subset = min(kid_subset_size, n_real, n_fake)
    with warnings.catch_warnings():  # its memory warning is about images; these are features
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kid = KernelInceptionDistance(feature=_Precomputed(real_f.shape[1]), subset_size=subset)
    kid.update(real_f, real=True)
    kid.update(fake_f, real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global RNG
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {
        "fid": _fid(real_f, fake_f),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "kid_subset_size": subset,
        "kid_subsets": kid.subsets,
        "feature_extractor": name,
        "n_real": n_real,
        "n_fake": n_fake,
    }


def fid_kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    extractor: FeatureExtractor,
    kid_subset_size: int,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID (mean, std over torchmetrics' 100 subsets) between (N, 1, H, W) sets.

    The KID subset size is clipped to min(n_real, n_fake) and reported as "kid_subset_size";
    ``seed`` fixes the KID subsets.
    """
    real_f = extract_features(extractor, real, batch_size)
    fake_f = extract_features(extractor, fake, batch_size)
    return _fid_kid_features(real_f, fake_f, extractor.name, kid_subset_size, seed)


def image_metrics(
    generated: torch.Tensor,
    gen_labels: torch.Tensor,
    real: torch.Tensor,
    real_labels: torch.Tensor,
    extractor: FeatureExtractor,
    cfg: EvaluationConfig,
    seed: int = 0,
) -> dict[str, Any]:
    """All image metrics of a generated set against the real (test) set, as one nested dict.

    Keys: "diversity" (all generated images) and "diversity_per_diagnosis"; "against_real";
    "fid_kid" (all images); "fid_per_diagnosis" (each diagnosis with >= 2 generated and >= 2
    real images); "feature_extractor", "n_generated", "n_real".
    """
    real_f = extract_features(extractor, real)
    fake_f = extract_features(extractor, generated)
    per_dx_div, per_dx_fid = {}, {}
    for c, dx in enumerate(CLASS_NAMES):
        gen_c, real_c = gen_labels == c, real_labels == c
        if int(gen_c.sum()) >= 2:
            per_dx_div[dx] = diversity(generated[gen_c], cfg.diversity_pairs, seed)
        if int(gen_c.sum()) >= 2 and int(real_c.sum()) >= 2:
            per_dx_fid[dx] = {
                "fid": _fid(real_f[real_c], fake_f[gen_c]),
                "feature_extractor": extractor.name,
                "n_real": int(real_c.sum()),
                "n_fake": int(gen_c.sum()),
            }
    return {
        "feature_extractor": extractor.name,
        "n_generated": len(generated),
        "n_real": len(real),
        "diversity": diversity(generated, cfg.diversity_pairs, seed),
        "diversity_per_diagnosis": per_dx_div,
        "against_real": against_real(generated, gen_labels, real, real_labels, seed),
        "fid_kid": _fid_kid_features(real_f, fake_f, extractor.name, cfg.kid_subset_size, seed),
        "fid_per_diagnosis": per_dx_fid,
    }
