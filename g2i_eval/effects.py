"""Genotype-effect recovery: does a generator reproduce the APOE e4 effect on the ventricles?

``effect_recovery`` generates images from genotype profiles that differ only in their APOE
e4 encoding (0, 1 or 2 copies), with the same diagnosis and the same sampling noise, measures
ventricle area (``g2i_eval.morphometry``) and fits the slope per e4 copy with a bootstrap
CI. Compared with the true slope (``simulations.truth_effects``) it says whether the model
learned the effect (ratio about 1), ignored it (about 0) or exaggerated it. ``real_slope``
is the same regression on real images, for comparison.

``group_mean_differences`` and the figure helpers show where generated (or real) images
differ between diagnoses and between e4 counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from g2i_eval.morphometry import measure, pixel_mm_for  # noqa: E402
from g2i_models.local_training import APOE_E4_NAMES  # noqa: E402
from g2i_models.pipeline import GENERATE_BATCH_SIZE, G2IPipeline, generate, image_seed  # noqa: E402

CLASS_NAMES = ("CN", "MCI", "AD")
MISSING_GENOTYPE = 3
E4_COUNTS = (0, 1, 2)


class EffectRecoveryError(ValueError):
    """A panel, genotype table or sample set that an effect cannot be estimated from."""


def apoe_columns(panel: Sequence[str]) -> list[int]:
    """Indices of the APOE e4 encodings in ``panel`` (``APOE_e4`` and ``rs429358``)."""
    cols = [i for i, name in enumerate(panel) if name in APOE_E4_NAMES]
    if not cols:
        shown = list(panel) if len(panel) <= 12 else [*panel[:6], "...", *panel[-3:]]
        raise EffectRecoveryError(
            f"the SNP panel {shown} has no APOE e4 column (looked for {list(APOE_E4_NAMES)}); "
            "the model cannot be asked about APOE e4"
        )
    return cols


def apoe_profiles(
    base: torch.Tensor, panel: Sequence[str], counts: Sequence[int] = E4_COUNTS
) -> torch.Tensor:
    """(n_snps,) genotype -> (len(counts), n_snps): copies with every APOE e4 column set to
    each count (the e4 allele is the counted risk allele of rs429358)."""
    if base.ndim != 1 or base.shape[0] != len(panel):
        raise EffectRecoveryError(
            f"base genotype has shape {tuple(base.shape)}; expected ({len(panel)},) to match "
            "the panel"
        )
    cols = apoe_columns(panel)
    out = base.long().unsqueeze(0).repeat(len(counts), 1)
    out[:, cols] = torch.as_tensor(list(counts), dtype=torch.long)[:, None]
    return out


def effect_slope(
    values: torch.Tensor | np.ndarray,
    e4: torch.Tensor | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """OLS slope of ``values`` (N,) on ``e4`` (N,) with a percentile bootstrap 95% CI.

    The bootstrap resamples (value, e4) pairs; resamples in which e4 does not vary are
    drawn again in effect (they are dropped from the percentiles).

    Returns:
        {slope, ci_low, ci_high, n}.
    """
    y = np.asarray(values, dtype=np.float64).ravel()
    x = np.asarray(e4, dtype=np.float64).ravel()
    if y.shape != x.shape:
        raise EffectRecoveryError(f"values {y.shape} and e4 {x.shape} differ in length")
    if y.size < 2 or np.ptp(x) == 0:
        raise EffectRecoveryError(
            f"e4 takes a single value over {y.size} samples; a slope needs at least two counts"
        )
    slope = float(np.cov(x, y, bias=True)[0, 1] / np.var(x))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, size=(n_boot, y.size))
    xb, yb = x[idx], y[idx]
    xc = xb - xb.mean(axis=1, keepdims=True)
    var = (xc**2).mean(axis=1)
    ok = var > 0
    boots = (xc[ok] * (yb[ok] - yb[ok].mean(axis=1, keepdims=True))).mean(axis=1) / var[ok]
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots.size else (np.nan, np.nan)
    return {"slope": slope, "ci_low": float(lo), "ci_high": float(hi), "n": int(y.size)}


def within_group_slope(
    values: torch.Tensor | np.ndarray,
    e4: torch.Tensor | np.ndarray,
    strata: torch.Tensor | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Slope of ``values`` on ``e4`` within strata (diagnoses): OLS with a free intercept per
    stratum (both demeaned within it), with a bootstrap 95% CI resampling within strata.

    This is what a generator conditioned on the diagnosis should reproduce when it varies e4
    at a fixed diagnosis: the e4 -> diagnosis path (in the pooled slope) is held out, and so
    is the selection into a diagnosis that the direct effect alone ignores.

    Returns:
        {slope, ci_low, ci_high, n}.
    """
    y = np.asarray(values, dtype=np.float64).ravel()
    x = np.asarray(e4, dtype=np.float64).ravel()
    g = np.asarray(strata).ravel()
    if not y.shape == x.shape == g.shape:
        raise EffectRecoveryError(f"values {y.shape}, e4 {x.shape}, strata {g.shape} differ")
    members = [np.flatnonzero(g == s) for s in np.unique(g)]

    def fit(index: list[np.ndarray]) -> float:
        num = den = 0.0
        for ix in index:
            xc = x[ix] - x[ix].mean()
            num += float(xc @ (y[ix] - y[ix].mean()))
            den += float(xc @ xc)
        return num / den if den > 0 else np.nan

    slope = fit(members)
    if not np.isfinite(slope):
        raise EffectRecoveryError("e4 does not vary within any stratum; no within slope")
    rng = np.random.default_rng(seed)
    boots = np.array(
        [fit([ix[rng.integers(0, ix.size, ix.size)] for ix in members]) for _ in range(n_boot)]
    )
    boots = boots[np.isfinite(boots)]
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots.size else (np.nan, np.nan)
    return {"slope": slope, "ci_low": float(lo), "ci_high": float(hi), "n": int(y.size)}


def paired_effect_slope(
    values: torch.Tensor | np.ndarray,
    e4: torch.Tensor | np.ndarray,
    groups: torch.Tensor | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of per-group OLS slopes with a bootstrap 95% CI over groups.

    A group is one sampling seed seen at several e4 counts (N,) ids in ``groups``; the
    differences within a group carry no sampling noise, so this CI is the one that says
    whether a generator responds to e4 at all. In a design balanced over e4 (every group
    at the same counts) the point estimate equals ``effect_slope``'s.

    Returns:
        {slope, ci_low, ci_high, n} with ``n`` the number of groups.
    """
    y = np.asarray(values, dtype=np.float64).ravel()
    x = np.asarray(e4, dtype=np.float64).ravel()
    g = np.asarray(groups).ravel()
    if not y.shape == x.shape == g.shape:
        raise EffectRecoveryError(f"values {y.shape}, e4 {x.shape}, groups {g.shape} differ")
    slopes = []
    for gid in np.unique(g):
        sel = g == gid
        if np.ptp(x[sel]) == 0:
            raise EffectRecoveryError(f"group {gid!r} has a single e4 count; cannot pair")
        xc = x[sel] - x[sel].mean()
        slopes.append(float((xc * y[sel]).sum() / (xc**2).sum()))
    per_group = np.asarray(slopes)
    rng = np.random.default_rng(seed)
    boots = per_group[rng.integers(0, per_group.size, (n_boot, per_group.size))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {
        "slope": float(per_group.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n": int(per_group.size),
    }


def _with_ratio(fit: dict[str, float], true_slope: float) -> dict[str, float]:
    """Add ratio = generated / true and its CI (the slope's CI bounds over the true slope)."""
    bounds = sorted((fit["ci_low"] / true_slope, fit["ci_high"] / true_slope))
    return {**fit, "ratio": fit["slope"] / true_slope, "ratio_ci_low": bounds[0],
            "ratio_ci_high": bounds[1]}  # fmt: skip


def effect_recovery(
    pipeline: G2IPipeline,
    panel: Sequence[str],
    base_genotypes: torch.Tensor,
    labels: torch.Tensor,
    true_slope: float,
    n_samples: int = 16,
    n_boot: int = 1000,
    seed: int = 0,
    pixel_mm: float | None = None,
    progress: bool = False,
    batch_size: int = GENERATE_BATCH_SIZE,
) -> dict[str, Any]:
    """Generated APOE e4 effect on ventricle area against the true one.

    For each diagnosis in ``labels`` and each e4 count 0/1/2, ``n_samples`` images are
    generated from the base profiles of that diagnosis (cycled) with their APOE e4 columns
    set to the count; the seed is the same across counts, so paired images share their
    sampling noise and differ only in the genotype.

    Args:
        pipeline: the trained generator.
        panel: SNP names of the model's genotype columns (n_snps).
        base_genotypes: (K, n_snps) int64 profiles to start from (e.g. real test subjects).
        labels: (K,) int64 diagnoses of the base profiles (0 CN, 1 MCI, 2 AD).
        true_slope: true effect in mm^2 per e4 copy (non-zero).
        n_samples: images per (diagnosis, e4 count).
        n_boot: bootstrap resamples for the CIs.
        seed: sampling and bootstrap seed.
        pixel_mm: canvas pixel spacing; None = ``pixel_mm_for`` the generated size.
        progress: show the sampler's progress bar.
        batch_size: images per sampler call (all conditions go through one batched
            ``generate``; the images do not depend on it).

    Returns:
        ``slope``, ``ci_low``, ``ci_high``, ``n``, ``ratio``, ``ratio_ci_low``,
        ``ratio_ci_high`` (pooled over diagnoses; the CI resamples images), ``paired`` (the
        same keys from ``paired_effect_slope``: the CI resamples seeds and is free of
        between-image variation), ``true_slope``, ``cortical`` (slope fit of the cortical
        CSF fraction), ``per_diagnosis`` {name: the slope and ratio keys, ``paired`` and
        ``cortical_slope``}, and tensors ``images`` (N, 1, H, W), ``e4`` (N,),
        ``labels`` (N,), ``ventricle_area_mm2`` (N,), ``cortical_csf_fraction`` (N,).
    """
    if true_slope == 0 or not np.isfinite(true_slope):
        raise EffectRecoveryError(f"true_slope must be finite and non-zero, got {true_slope}")
    if n_samples < 1:
        raise EffectRecoveryError(f"n_samples must be >= 1, got {n_samples}")
    if base_genotypes.ndim != 2 or base_genotypes.shape[0] != labels.shape[0]:
        raise EffectRecoveryError(
            f"base_genotypes {tuple(base_genotypes.shape)} and labels {tuple(labels.shape)} "
            "must be (K, n_snps) and (K,)"
        )
    genotypes, e4s, dxs, seeds, noise_seeds = [], [], [], [], []
    for dx in sorted(int(v) for v in torch.unique(labels)):
        bases = base_genotypes[labels == dx]
        picks = bases[torch.arange(n_samples) % bases.shape[0]]
        profiles = torch.stack([apoe_profiles(b, panel) for b in picks])  # (n, 3, n_snps)
        y = torch.full((n_samples,), dx, dtype=torch.long)
        # Sample j of a diagnosis has the same noise at every e4 count (paired).
        shared = [image_seed(seed + 1000 * dx, j) for j in range(n_samples)]
        for k, count in enumerate(E4_COUNTS):
            genotypes.append(profiles[:, k])
            e4s.append(torch.full((n_samples,), count, dtype=torch.long))
            dxs.append(y)
            seeds.append(dx * n_samples + torch.arange(n_samples))
            noise_seeds.extend(shared)
    e4_all, dx_all, pair = torch.cat(e4s), torch.cat(dxs), torch.cat(seeds)
    x_all = generate(
        pipeline,
        torch.cat(genotypes),
        dx_all,
        image_seeds=noise_seeds,
        batch_size=batch_size,
        progress=progress,
    )
    x_all = x_all.float().cpu()
    pixel_mm = pixel_mm_for(x_all.shape[-1]) if pixel_mm is None else pixel_mm
    m = measure(x_all, pixel_mm)
    area, cortex = m["ventricle_area_mm2"], m["cortical_csf_fraction"]
    per_dx: dict[str, dict[str, float]] = {}
    for dx in sorted(int(v) for v in torch.unique(dx_all)):
        sel = dx_all == dx
        fit = _with_ratio(effect_slope(area[sel], e4_all[sel], n_boot, seed), true_slope)
        fit["cortical_slope"] = effect_slope(cortex[sel], e4_all[sel], n_boot, seed)["slope"]
        paired = paired_effect_slope(area[sel], e4_all[sel], pair[sel], n_boot, seed)
        fit["paired"] = _with_ratio(paired, true_slope)
        per_dx[CLASS_NAMES[dx] if dx < len(CLASS_NAMES) else str(dx)] = fit
    pooled = _with_ratio(effect_slope(area, e4_all, n_boot, seed), true_slope)
    return {
        **pooled,
        "steps": e4_steps(area, e4_all),
        "true_slope": float(true_slope),
        "paired": _with_ratio(paired_effect_slope(area, e4_all, pair, n_boot, seed), true_slope),
        "cortical": effect_slope(cortex, e4_all, n_boot, seed),
        "per_diagnosis": per_dx,
        "images": x_all,
        "e4": e4_all,
        "labels": dx_all,
        "ventricle_area_mm2": area,
        "cortical_csf_fraction": cortex,
    }


def e4_steps(area: torch.Tensor, e4: torch.Tensor) -> dict[str, float]:
    """Mean ventricle area at each e4 count and the 0->1 and 1->2 differences (mm^2): an
    additive effect gives two equal steps, a dominant or recessive one does not."""
    a, k = np.asarray(area, float), np.asarray(e4)
    means = {c: float(a[k == c].mean()) if (k == c).any() else math.nan for c in E4_COUNTS}
    return {
        "mean_0": means[0],
        "mean_1": means[1],
        "mean_2": means[2],
        "0->1": means[1] - means[0],
        "1->2": means[2] - means[1],
    }


def e4_counts(genotypes: torch.Tensor, panel: Sequence[str]) -> torch.Tensor:
    """(N, n_snps) -> (N,) APOE e4 copies: the ``APOE_e4`` column, else rs429358 where it is
    missing; -1 where every APOE e4 encoding is missing."""
    cols = apoe_columns(panel)
    cols = sorted(cols, key=lambda c: APOE_E4_NAMES.index(panel[c]))
    out = torch.full((genotypes.shape[0],), -1, dtype=torch.long)
    for c in reversed(cols):  # the preferred column is written last
        v = genotypes[:, c].long()
        out = torch.where(v != MISSING_GENOTYPE, v, out)
    return out


def real_slope(
    dataset: torch.utils.data.Dataset,
    panel: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    pixel_mm: float | None = None,
) -> dict[str, Any]:
    """Ventricle area of real images regressed on their e4 count (missing e4 left out).

    ``dataset`` items are {"image": (1, S, S), "genotypes": (n_snps,), "label": ()}.

    Returns:
        The pooled ``slope``, ``ci_low``, ``ci_high``, ``n``, ``per_diagnosis`` fits
        (diagnoses whose e4 count varies) and the ``within_diagnosis`` fit
        (``within_group_slope``; None when e4 varies in no diagnosis).
    """
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    if not items:
        raise EffectRecoveryError("the dataset is empty")
    x = torch.stack([it["image"][:1] for it in items])
    e4 = e4_counts(torch.stack([it["genotypes"] for it in items]), panel)
    dx = torch.stack([torch.as_tensor(it["label"]) for it in items])
    keep = e4 >= 0
    pixel_mm = pixel_mm_for(x.shape[-1]) if pixel_mm is None else pixel_mm
    area = measure(x[keep], pixel_mm)["ventricle_area_mm2"]
    e4, dx = e4[keep], dx[keep]
    per_dx = {}
    for d in sorted(int(v) for v in torch.unique(dx)):
        sel = dx == d
        if torch.unique(e4[sel]).numel() > 1:
            per_dx[CLASS_NAMES[d]] = effect_slope(area[sel], e4[sel], n_boot, seed)
    fit = effect_slope(area, e4, n_boot, seed)
    within = within_group_slope(area, e4, dx, n_boot, seed) if per_dx else None
    return {
        **fit,
        "steps": e4_steps(area, e4),
        "per_diagnosis": per_dx,
        "within_diagnosis": within,
    }


def dx_areas(images: torch.Tensor, labels: torch.Tensor, pixel_mm: float) -> dict[str, float]:
    """Mean ventricle area (mm^2) per diagnosis name of images (N, 1, H, W)."""
    area = np.asarray(measure(images, pixel_mm)["ventricle_area_mm2"], float)
    y = np.asarray(labels)
    return {
        CLASS_NAMES[d]: float(area[y == d].mean()) for d in sorted(set(y.tolist())) if d < 3
    }


def group_mean_differences(
    images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray
) -> dict[str, dict[str, torch.Tensor]]:
    """Per-diagnosis mean images and their differences.

    Args:
        images: (N, 1, H, W) or (N, H, W).
        labels: (N,) 0 CN / 1 MCI / 2 AD.

    Returns:
        {"means": {"CN": (H, W), ...}, "differences": {"MCI-CN", "AD-CN", "AD-MCI": (H, W)}},
        each difference present when both of its groups are.
    """
    x = torch.as_tensor(np.asarray(images), dtype=torch.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    y = torch.as_tensor(np.asarray(labels)).long()
    if x.ndim != 3 or x.shape[0] != y.shape[0]:
        raise EffectRecoveryError(
            f"images {tuple(x.shape)} and labels {tuple(y.shape)} must be (N, [1,] H, W), (N,)"
        )
    means = {
        name: x[y == k].mean(dim=0) for k, name in enumerate(CLASS_NAMES) if bool((y == k).any())
    }
    pairs = (("MCI", "CN"), ("AD", "CN"), ("AD", "MCI"))
    diffs = {f"{a}-{b}": means[a] - means[b] for a, b in pairs if a in means and b in means}
    return {"means": means, "differences": diffs}


def _diverging_row(
    axes: Sequence[Any], maps: Mapping[str, np.ndarray], fig: Any, label: str
) -> None:
    vmax = max(float(np.abs(m).max()) for m in maps.values()) or 1.0
    im = None
    for ax, (name, m) in zip(axes, maps.items(), strict=True):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label=label)


def save_difference_figure(
    diffs: Mapping[str, torch.Tensor | np.ndarray], path: str | Path, title: str = ""
) -> Path:
    """Difference maps (H, W) side by side, diverging colours centred at 0 with one shared
    symmetric scale and a colour bar -> PNG at ``path``."""
    if not diffs:
        raise EffectRecoveryError("no difference maps to draw (fewer than two groups?)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    maps = {k: np.asarray(v, dtype=np.float64) for k, v in diffs.items()}
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps) + 1, 3.2), squeeze=False)
    _diverging_row(list(axes[0]), maps, fig, "intensity difference")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_e4_figure(
    images: torch.Tensor | np.ndarray,
    e4: torch.Tensor | np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """Mean images at e4 = 0, 1, 2 (grey) and e4=1 - e4=0, e4=2 - e4=0 (diverging, shared
    symmetric scale) -> PNG. ``images`` (N, 1, H, W) or (N, H, W), ``e4`` (N,)."""
    x = np.asarray(images, dtype=np.float64)
    x = x[:, 0] if x.ndim == 4 else x
    counts = np.asarray(e4)
    means = {c: x[counts == c].mean(axis=0) for c in E4_COUNTS if np.any(counts == c)}
    if 0 not in means or len(means) < 2:
        raise EffectRecoveryError(f"need e4 = 0 and another count, got {sorted(means)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    diffs = {f"e4={c} - e4=0": means[c] - means[0] for c in means if c != 0}
    fig, axes = plt.subplots(1, len(means) + len(diffs), figsize=(3.0 * 5 + 1, 3.2))
    for ax, (c, m) in zip(axes, means.items(), strict=False):
        ax.imshow(m, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(f"mean, e4={c}", fontsize=9)
        ax.axis("off")
    _diverging_row(list(axes[len(means) :]), diffs, fig, "intensity difference")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
