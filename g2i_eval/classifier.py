"""The downstream CN / MCI / AD classifier: real training images vs real + synthetic.

The paper (section 4, "Evaluation") trains "a simple 2-layered Convolution Neural Network" on
the real training slices, then on the same slices topped up with generated ones to 500
images per class, and compares accuracy and macro precision / recall / F1 on held-out real
images. ``downstream_comparison`` runs both arms over several seeds; ``pool_sites`` pools
the per-site results of a federation.

Training (both arms alike): class-weighted cross-entropy (weights inverse to each class's
share of that arm's training set; unweighted, the real-only arm predicted the majority class),
Adam, up to ``classifier_epochs`` epochs with early stopping on a stratified validation part
of the real training images (``classifier_val_fraction``, never synthetic, never the test
split) after ``classifier_patience`` epochs without a lower validation loss; the best epoch's
weights are kept. The gain is the paired difference augmented - real per seed (same seed,
same initialisation, same validation images), reported with a 95% t interval over the seeds.

A third arm trains on the synthetic images alone ("synthetic": train on synthetic, test on
real). It is not an augmentation but a reading of why one does or does not help: a synthetic
set whose classifier scores near the real-only one carries the diagnosis as the real images
do; one that scores near chance adds images whose labels a classifier cannot use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)
from tqdm import tqdm

from conf.schema import EvaluationConfig
from g2i_models.device import get_device

CLASS_NAMES = ("CN", "MCI", "AD")
METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
ARMS = ("real", "augmented", "synthetic")


class PaperCNN(nn.Module):
    """The paper's 2-layer CNN for 3-way diagnosis. Input (B, 1, H, W), any H, W >= 4;
    output logits (B, num_classes).

    Layers::

        Conv2d(1, c1, 3, padding=1) -> ReLU -> MaxPool2d(2)
        Conv2d(c1, c2, 3, padding=1) -> ReLU -> AdaptiveMaxPool2d(pool)
        Flatten -> Linear(c2 * pool * pool, num_classes)

    The second pooling is adaptive (to a ``pool`` x ``pool`` grid) so one network serves
    32, 64 or 256 px slices while keeping a coarse spatial layout (where the ventricles are).
    """

    def __init__(
        self, num_classes: int = 3, channels: tuple[int, int] = (16, 32), pool: int = 4
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(pool),
        )
        self.head = nn.Linear(c2 * pool * pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def top_up(
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    synth_images: torch.Tensor,
    synth_labels: torch.Tensor,
    per_class: int,
    seed: int,
    num_classes: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, dict[str, int]]]:
    """Every real image plus synthetic images of its class until each class has ``per_class``.

    Synthetic images are drawn without replacement; when a class has fewer than it needs,
    each is used once and the remainder is drawn with replacement (``with_replacement`` = 1 in
    the counts). A class with more than ``per_class`` real images keeps them all and gets no
    synthetic ones; a class with no synthetic image stays short (``shortfall``).

    Args:
        real_images: (N, 1, H, W); real_labels: (N,) int in [0, num_classes).
        synth_images: (M, 1, H, W); synth_labels: (M,).

    Returns:
        images (N + K, 1, H, W) real first, labels (N + K,), and counts per class name:
        ``real``, ``synthetic``, ``unique_synthetic``, ``with_replacement`` (0/1),
        ``shortfall`` (images still missing to reach ``per_class``).
    """
    if real_images.shape[1:] != synth_images.shape[1:]:
        raise ValueError(
            f"real images {tuple(real_images.shape[1:])} and synthetic images "
            f"{tuple(synth_images.shape[1:])} differ in shape; resize one to the other"
        )
    rng = np.random.default_rng(seed)
    real_labels = real_labels.long()
    synth_labels = synth_labels.long()
    picks: list[np.ndarray] = []
    counts: dict[str, dict[str, int]] = {}
    for c in range(num_classes):
        n_real = int((real_labels == c).sum())
        pool = torch.nonzero(synth_labels == c).flatten().numpy()
        need = max(0, per_class - n_real)
        if need <= len(pool):
            chosen = rng.choice(pool, size=need, replace=False)
        elif len(pool) > 0:
            extra = rng.choice(pool, size=need - len(pool), replace=True)
            chosen = np.concatenate([rng.permutation(pool), extra])
        else:
            chosen = pool[:0]
        picks.append(chosen.astype(np.int64))
        counts[CLASS_NAMES[c] if c < len(CLASS_NAMES) else str(c)] = {
            "real": n_real,
            "synthetic": len(chosen),
            "unique_synthetic": len(np.unique(chosen)),
            "with_replacement": int(need > len(pool) > 0),
            "shortfall": max(0, need - len(chosen)),
        }
    index = torch.from_numpy(np.concatenate(picks))
    images = torch.cat([real_images.float(), synth_images[index].float()])
    labels = torch.cat([real_labels, synth_labels[index]])
    return images, labels, counts


def class_weights(labels: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """(num_classes,) weights N / (K * n_c); a class absent from ``labels`` gets weight 0."""
    counts = torch.bincount(labels.long(), minlength=num_classes).float()
    present = counts > 0
    w = torch.zeros(num_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def held_out_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` training images ``stratified_holdout`` holds out."""
    return max(int(round(fraction * n)), 1) if n >= 2 else 0


def synthetic_needed(labels: torch.Tensor, cfg: EvaluationConfig, num_classes: int = 3) -> int:
    """Synthetic images per class that top every class of the classifier's fit set (the real
    training images less the validation hold-out) up to ``cfg.classifier_per_class`` without
    drawing any image twice."""
    counts = torch.bincount(labels.long(), minlength=num_classes).tolist()
    kept = [n - held_out_count(n, cfg.classifier_val_fraction) for n in counts]
    return max(0, cfg.classifier_per_class - min(kept))


def stratified_holdout(
    labels: torch.Tensor, fraction: float, seed: int, num_classes: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, held-out) index tensors: ``fraction`` of every class held out (at least one
    image of a class with two or more), the rest kept."""
    if not 0 < fraction < 1:
        raise ValueError(f"classifier_val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    held: list[np.ndarray] = []
    y = labels.long().numpy()
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_held = held_out_count(len(idx), fraction)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.from_numpy(np.sort(np.concatenate(keep))), torch.from_numpy(
        np.sort(np.concatenate(held))
    )


@torch.no_grad()
def _weighted_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, dev: torch.device
) -> float:
    logits = torch.cat([model(b.float().to(dev)) for b in x.split(256)])
    return float(F.cross_entropy(logits, y.long().to(dev), weight=weight.to(dev)))


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: EvaluationConfig,
    seed: int,
    device: str = "auto",
    progress: bool = False,
    val_images: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
) -> PaperCNN:
    """A ``PaperCNN`` trained with Adam (``classifier_lr``) and class-weighted cross-entropy on
    images (N, 1, H, W) in [0, 1] and labels (N,), for at most ``classifier_epochs`` epochs;
    with validation images, stopped after ``classifier_patience`` epochs without a lower
    validation loss (weighted by the training set's class weights) and returned at its best
    epoch. Initialisation and batch order depend only on ``seed`` (the global RNG is left as
    it was)."""
    dev = get_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PaperCNN().to(dev)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset(images.float(), labels.long()),
        batch_size=max(1, min(cfg.classifier_batch_size, len(labels))),
        shuffle=True,
        generator=gen,
    )
    weight = class_weights(labels).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.classifier_lr)
    validate = val_images is not None and val_labels is not None and len(val_labels) > 0
    best, best_state, stale = math.inf, None, 0
    for _ in tqdm(range(cfg.classifier_epochs), desc="classifier", disable=not progress):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x.to(dev)), y.to(dev), weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not validate:
            continue
        model.eval()
        val = _weighted_loss(model, val_images, val_labels, weight, dev)
        if val < best - 1e-6:
            best, stale = val, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.classifier_patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def paired_gain(real: Sequence[float], augmented: Sequence[float]) -> dict[str, Any]:
    """Per-seed differences augmented - real: mean, SD, 95% t interval ([low, high]; the mean
    twice for one seed), and the differences."""
    d = np.asarray(augmented, float) - np.asarray(real, float)
    mean = float(d.mean()) if len(d) else math.nan
    if len(d) > 1:
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d)))
    else:
        sd, half = 0.0, 0.0
    return {"mean": mean, "sd": sd, "ci": [mean - half, mean + half], "values": d.tolist()}


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, batch_size: int = 256, device: str = "auto"
) -> torch.Tensor:
    """Predicted labels (N,) for images (N, 1, H, W)."""
    dev = get_device(device)
    model = model.to(dev).eval()
    out = [model(x.float().to(dev)).argmax(1).cpu() for x in images.split(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def classification_metrics(
    y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int = 3
) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 (torchmetrics).

    Macro means the unweighted mean over classes; a class that is neither true nor predicted
    anywhere is left out of the mean, and a class never predicted has precision 0.
    """
    t, p = y_true.long().flatten(), y_pred.long().flatten()
    kw: dict[str, Any] = {"num_classes": num_classes, "average": "macro"}
    return {
        "accuracy": float(multiclass_accuracy(p, t, num_classes=num_classes, average="micro")),
        "macro_precision": float(multiclass_precision(p, t, **kw)),
        "macro_recall": float(multiclass_recall(p, t, **kw)),
        "macro_f1": float(multiclass_f1_score(p, t, **kw)),
    }


def _mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample SD (ddof = 1; 0 for a single value) and the values themselves."""
    v = [float(x) for x in values]
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(np.mean(v)) if v else math.nan, "sd": sd, "values": v}


def downstream_comparison(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    synth_images: torch.Tensor,
    synth_labels: torch.Tensor,
    cfg: EvaluationConfig,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Train on real images only ("real"), on real + synthetic topped up to
    ``cfg.classifier_per_class`` per class ("augmented") and on the synthetic images alone
    ("synthetic"), once per seed in ``cfg.classifier_seeds``, and score each on the same real
    test images. Every arm stops early on the same held-out real training images.

    Returns:
        ``{"real": {metric: {"mean", "sd", "values"}}, "augmented": {...}, "synthetic": {...},
        "gain": {metric: augmented mean - real mean}, "gain_paired": {metric: paired per-seed
        difference with its 95% CI}, "counts": top-up counts per class,
        "seeds", "n_train", "n_test", "per_class"}``; SD over seeds with ddof = 1.
    """
    if len(test_labels) == 0:
        raise ValueError("downstream_comparison: the test split is empty; nothing to score")
    if len(train_labels) == 0:
        raise ValueError("downstream_comparison: the training split is empty")
    scores: dict[str, dict[str, list[float]]] = {a: {m: [] for m in METRICS} for a in ARMS}
    counts: dict[str, dict[str, int]] = {}
    for seed in cfg.classifier_seeds:
        # The validation images are real training images, held out of every arm alike.
        keep, held = stratified_holdout(train_labels, cfg.classifier_val_fraction, seed)
        fit_x, fit_y = train_images[keep], train_labels[keep]
        aug_x, aug_y, counts = top_up(
            fit_x,
            fit_y,
            synth_images,
            synth_labels,
            cfg.classifier_per_class,
            seed,
        )
        val = {"val_images": train_images[held], "val_labels": train_labels[held]}
        arms = ((fit_x, fit_y), (aug_x, aug_y), (synth_images, synth_labels))
        for arm, (x, y) in zip(ARMS, arms, strict=True):
            if len(y) == 0:
                continue
            model = train_classifier(x, y, cfg, seed, device, progress, **val)
            m = classification_metrics(test_labels, predict(model, test_images, device=device))
            for k, v in m.items():
                scores[arm][k].append(v)
    # An empty synthetic set trains no synthetic-only arm (the augmented arm is then real-only).
    out: dict[str, Any] = {
        arm: {k: _mean_sd(v) for k, v in scores[arm].items()}
        for arm in ARMS
        if scores[arm]["accuracy"]
    }
    out["gain"] = {m: out["augmented"][m]["mean"] - out["real"][m]["mean"] for m in METRICS}
    out["gain_paired"] = {
        m: paired_gain(scores["real"][m], scores["augmented"][m]) for m in METRICS
    }
    out.update(
        counts=counts,
        seeds=[int(s) for s in cfg.classifier_seeds],
        n_train=int(len(train_labels)),
        n_test=int(len(test_labels)),
        per_class=int(cfg.classifier_per_class),
    )
    return out


def pool_sites(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Across-site mean and SD (ddof = 1) of each site's seed-mean, per arm and metric, and of
    the gain; ``results`` maps site name -> ``downstream_comparison`` output."""
    sites = list(results)
    pooled: dict[str, Any] = {
        arm: {m: _mean_sd([results[s][arm][m]["mean"] for s in sites]) for m in METRICS}
        for arm in ARMS
        if all(arm in results[s] for s in sites)
    }
    pooled["gain"] = {m: _mean_sd([results[s]["gain"][m] for s in sites]) for m in METRICS}
    pooled["sites"] = sites
    return pooled
