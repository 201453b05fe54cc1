"""Memorisation audit: is any synthetic image a near copy of a training image?

Each synthetic image's nearest training image is compared with what "near" means for real
data: the distances from real held-out (test) images to their nearest training image. A
synthetic image closer to the training set than the ``quantile`` of that baseline is
flagged. A generator that draws fresh images from the real distribution has about
``quantile`` of its images flagged by chance, so read ``fraction_flagged`` against
``quantile``, and the flagged images themselves (exact copies sit at distance 0). The audit
runs in pixel space and, optionally, in a feature space (in the
federation: the global autoencoder's encoder means, which every site holds, so the features
are the same everywhere without sharing data).

Distances are root-mean-square differences per element (Euclidean distance / sqrt(D) for
D pixels or features), so numbers from 32 px and 256 px slices are comparable; on images in
[0, 1] a pixel distance of 0.01 is a 1 % mean intensity difference.

The audit's result holds summary statistics and indices into the *synthetic* set only: no
training-image index, subject ID or pixel, so it can leave the site that holds the data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Features = Callable[[torch.Tensor], torch.Tensor]
SUMMARY_QUANTILES = {"q05": 0.05, "q25": 0.25, "q50": 0.50}


def nearest_neighbours(
    queries: torch.Tensor, references: torch.Tensor, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query its nearest reference: (distances (N,) float64 RMS per element,
    indices (N,) int64 into ``references``).

    Args:
        queries: (N, ...); references: (M, ...) with the same trailing shape, M >= 1.
        batch: queries per chunk; memory is O(batch * M).
    """
    q = queries.reshape(len(queries), -1).double()
    r = references.reshape(len(references), -1).double()
    if q.shape[1] != r.shape[1]:
        raise ValueError(
            f"queries have {q.shape[1]} elements each and references {r.shape[1]}; "
            "compare images of one size (or features of one extractor)"
        )
    if len(r) == 0:
        raise ValueError("nearest_neighbours: no reference items")
    dist, idx = [], []
    for chunk in q.split(batch):
        # The direct difference form: exact zeros for exact copies (the matrix-product form
        # leaves rounding residue).
        d = torch.cdist(chunk, r, compute_mode="donot_use_mm_for_euclid_dist")
        best, arg = d.min(dim=1)
        dist.append(best)
        idx.append(arg)
    if not dist:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(dist) / q.shape[1] ** 0.5, torch.cat(idx)


def summarise(distances: torch.Tensor) -> dict[str, float]:
    """min, q05 / q25 / q50 (numpy's linear quantiles) and mean of a set of distances."""
    d = distances.double().numpy()
    out = {"min": float(d.min())}
    out.update({k: float(np.quantile(d, q)) for k, q in SUMMARY_QUANTILES.items()})
    out["mean"] = float(d.mean())
    return out


@torch.no_grad()
def embed(x: torch.Tensor, features: Features, batch: int = 64) -> torch.Tensor:
    """``features`` applied in chunks: (N, ...) -> (N, F) float64 on the CPU."""
    return torch.cat([features(c).reshape(len(c), -1).double().cpu() for c in x.split(batch)])


def _audit_space(
    synthetic: torch.Tensor, train: torch.Tensor, test: torch.Tensor, quantile: float, batch: int
) -> dict[str, Any]:
    synth_d, _ = nearest_neighbours(synthetic, train, batch)
    base_d, _ = nearest_neighbours(test, train, batch)
    threshold = float(np.quantile(base_d.numpy(), quantile))
    flagged = torch.nonzero(synth_d < threshold).flatten().tolist()
    return {
        "synthetic_to_train": summarise(synth_d),
        "test_to_train": summarise(base_d),
        "threshold": threshold,
        "fraction_flagged": len(flagged) / len(synth_d),
        "flagged": [{"synthetic_index": i, "distance": float(synth_d[i])} for i in flagged],
    }


def memorisation_audit(
    synthetic: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    features: Features | None = None,
    quantile: float = 0.05,
    batch: int = 256,
) -> dict[str, Any]:
    """Flag synthetic images closer to a training image than real test images usually are.

    Args:
        synthetic: (N, 1, H, W); train: (M, 1, H, W); test: (T, 1, H, W), all in [0, 1].
        features: optional map (B, 1, H, W) -> (B, ...) defining a second space.
        quantile: the baseline quantile used as the threshold, in (0, 1).

    Returns:
        ``{"pixel": space, "features": space (only with ``features``), "quantile",
        "n_synthetic", "n_train", "n_test"}`` with ``space`` = ``{"synthetic_to_train",
        "test_to_train"`` (each min / q05 / q25 / q50 / mean of nearest-neighbour
        distances), ``"threshold"``, ``"fraction_flagged"``, ``"flagged"``: a list of
        ``{"synthetic_index", "distance"}``}. Nothing in it identifies or reproduces a
        training image: no training index, subject ID or pixel value.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    for name, x in (("synthetic", synthetic), ("train", train), ("test", test)):
        if len(x) == 0:
            raise ValueError(f"memorisation_audit: no {name} images")
    out: dict[str, Any] = {"pixel": _audit_space(synthetic, train, test, quantile, batch)}
    if features is not None:
        f = [embed(x.float(), features) for x in (synthetic, train, test)]
        out["features"] = _audit_space(*f, quantile, batch)
    out.update(
        quantile=float(quantile),
        n_synthetic=int(len(synthetic)),
        n_train=int(len(train)),
        n_test=int(len(test)),
    )
    return out


def autoencoder_features(ae: torch.nn.Module, device: torch.device | str = "cpu") -> Features:
    """Features from a diffusers ``AutoencoderKL``: the encoder's posterior mean (the latent
    without sampling noise) for images (B, 1, H, W) in [0, 1], flattened to (B, c * h * w)."""
    ae = ae.to(device).eval()

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        posterior = ae.encode(2.0 * x.to(device) - 1.0).latent_dist
        return posterior.mean.flatten(1)

    return features


def coarse(x: float, digits: int = 2) -> float:
    """``x`` to ``digits`` significant digits (0 stays 0)."""
    return float(f"{x:.{digits - 1}e}") if x else 0.0


def aggregate_audit(audit: dict[str, Any], digits: int = 2) -> dict[str, Any]:
    """What a site releases from ``memorisation_audit``: per space the share of synthetic
    images flagged and the median synthetic-to-train and test-to-train distances, each to
    ``digits`` significant digits; no per-image distance, index, minimum or threshold (a
    reader who chose the images would learn how far each is from a training image)."""
    out: dict[str, Any] = {
        k: audit[k] for k in ("quantile", "n_synthetic", "n_train", "n_test") if k in audit
    }
    for space in ("pixel", "features"):
        if space in audit:
            a = audit[space]
            out[space] = {
                "fraction_flagged": coarse(a["fraction_flagged"], digits),
                "synthetic_to_train_q50": coarse(a["synthetic_to_train"]["q50"], digits),
                "test_to_train_q50": coarse(a["test_to_train"]["q50"], digits),
            }
    return out
