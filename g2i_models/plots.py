"""Figures and tables written by the centralized baseline: sample grids, loss curves."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

CLASS_NAMES = ("CN", "MCI", "AD")


def save_sample_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    path: str | Path,
    class_names: Sequence[str] = CLASS_NAMES,
    title: str = "",
) -> Path:
    """One row per class: images (B, 1, H, W) in [0, 1], labels (B,) -> PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [images[labels == k] for k in range(len(class_names))]
    n_cols = max(1, max(len(r) for r in rows))
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(1.4 * n_cols, 1.5 * len(rows)), squeeze=False
    )
    for k, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[k, j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j, 0].float().cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        axes[k, 0].set_title(class_names[k], loc="left", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_loss_curves(
    history: Sequence[dict[str, float]], path: str | Path, keys: Sequence[str] = ("loss",)
) -> tuple[Path, Path]:
    """Per-step records -> ``<path>.csv`` (all columns) and ``<path>.png`` (``keys``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = path.with_suffix(".csv"), path.with_suffix(".png")
    columns = sorted({k for record in history for k in record}, key=lambda k: (k != "step", k))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        values = [r[key] for r in history if key in r]
        if values:
            ax.plot(values, alpha=0.35, label=f"{key} (step)")
            window = max(1, len(values) // 20)
            smooth = torch.tensor(values).unfold(0, window, 1).mean(1) if window > 1 else None
            if smooth is not None:
                ax.plot(range(window - 1, len(values)), smooth.tolist(), label=f"{key} (mean)")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(path.stem)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path


def save_real_vs_synthetic(
    real: torch.Tensor,
    real_labels: torch.Tensor,
    synthetic: torch.Tensor,
    synthetic_labels: torch.Tensor,
    path: str | Path,
    per_class: int = 4,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:
    """One row per class: ``per_class`` real slices on the left, as many synthetic ones on
    the right (images (B, 1, H, W) in [0, 1]) -> PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(
        len(class_names), 2 * per_class, figsize=(1.3 * 2 * per_class, 1.45 * len(class_names)),
        squeeze=False,
    )
    for k, name in enumerate(class_names):
        sides = (real[real_labels == k][:per_class], synthetic[synthetic_labels == k][:per_class])
        for side, images in enumerate(sides):
            for j in range(per_class):
                ax = axes[k, side * per_class + j]
                ax.axis("off")
                if j < len(images):
                    ax.imshow(images[j, 0].float().cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        axes[k, 0].set_title(f"{name} real", loc="left", fontsize=8)
        axes[k, per_class].set_title(f"{name} synthetic", loc="left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
