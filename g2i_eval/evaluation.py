"""Evaluate a trained G2I model: image quality, genotype-effect recovery, downstream
classification with augmentation and a memorisation audit, with the figures a reader wants.

``evaluate_model`` is what ``g2i-evaluate`` and ``g2i-study`` call. It needs the real
images (the training split for the extractor, the classifier and the audit; the held-out
test split for the metrics), so it runs where the data is: at a site, or on the synthetic
cohort. In a federation the sites run the classifier and the audit themselves and send only
summaries (``client.task.evaluate_synthetic``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from conf.schema import EvaluationConfig
from g2i_eval.classifier import downstream_comparison, synthetic_needed
from g2i_eval.effects import (
    EffectRecoveryError,
    apoe_columns,
    dx_areas,
    effect_recovery,
    group_mean_differences,
    real_slope,
    save_difference_figure,
    save_e4_figure,
)
from g2i_eval.features import FeatureExtractor, build_extractor, extract_features
from g2i_eval.memorisation import memorisation_audit
from g2i_eval.metrics import image_metrics
from g2i_eval.morphometry import pixel_mm_for
from g2i_models.pipeline import G2IPipeline, generate
from g2i_models.plots import CLASS_NAMES, save_sample_grid

log = logging.getLogger(__name__)


def stack_dataset(dataset: Dataset) -> dict[str, torch.Tensor]:
    """All items of ``dataset``: images (N, 1, H, W), genotypes (N, n_snps), labels (N,)."""
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise ValueError("the dataset is empty")
    return {
        "images": torch.stack([it["image"] for it in items]).float(),
        "genotypes": torch.stack([it["genotypes"] for it in items]).long(),
        "labels": torch.stack([torch.as_tensor(it["label"]) for it in items]).long(),
    }


def conditions_from(
    real: dict[str, torch.Tensor], per_class: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Genotypes (B, n_snps) and labels (B,): ``per_class`` per diagnosis, cycling through the
    genotype profiles of the real subjects with that diagnosis (classes without subjects are
    skipped)."""
    genotypes, labels = [], []
    for k in range(num_classes):
        rows = torch.nonzero(real["labels"] == k).flatten()
        if len(rows) == 0:
            continue
        pick = rows[torch.arange(per_class) % len(rows)]
        genotypes.append(real["genotypes"][pick])
        labels.append(torch.full((per_class,), k, dtype=torch.long))
    return torch.cat(genotypes), torch.cat(labels)


def evaluate_model(
    pipeline: G2IPipeline,
    panel: list[str],
    train_set: Dataset,
    test_set: Dataset,
    cfg: EvaluationConfig,
    out_dir: str | Path,
    true_effect: dict[str, Any] | None = None,
    extractor: FeatureExtractor | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Every evaluation of one model; writes figures and ``evaluation.json`` to ``out_dir``.

    Args:
        panel: the SNP names of the genotype columns (APOE e4 columns are found by name).
        train_set / test_set: real data; generated images are conditioned on the test
            subjects' genotype profiles and scored against the test images.
        true_effect: the cohort's true APOE e4 effect on ventricle area
            (``simulations.truth_effects.true_ventricle_area_slope``; its
            ``slope_mm2_per_copy``), when known; else the generated slope is compared with
            the slope measured on the real images.
        extractor: features for FID / KID and the audit; built from ``cfg`` when None.

    Returns:
        ``{"image": ..., "effect": ..., "downstream": ..., "memorisation": ...,
        "feature_extractor": name, "n_generated": ...}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = int(pipeline.config.num_classes)
    train, test = stack_dataset(train_set), stack_dataset(test_set)
    if extractor is None:
        extractor = build_extractor(cfg, train_set, out, seed=seed, progress=progress)
    uses_genotypes = pipeline.snp_encoder is not None

    # One generated set serves the metrics and the augmentation: enough per class to top the
    # smallest real class of the classifier's fit set up to cfg.classifier_per_class.
    per_class = max(cfg.samples_per_class, synthetic_needed(train["labels"], cfg, num_classes))
    genotypes, labels = conditions_from(test, per_class, num_classes)
    log.info("generating %d images (%d per class)", len(labels), per_class)
    generated = generate(
        pipeline, genotypes if uses_genotypes else None, labels, seed=seed, progress=progress
    ).cpu()
    names = list(CLASS_NAMES[:num_classes])
    save_sample_grid(
        generated[:: max(1, per_class // 8)],
        labels[:: max(1, per_class // 8)],
        out / "samples.png",
        names,
        title="generated",
    )
    save_sample_grid(
        test["images"][:64], test["labels"][:64], out / "real.png", names, title="real (test)"
    )

    result: dict[str, Any] = {"feature_extractor": extractor.name, "n_generated": len(labels)}
    result["image"] = image_metrics(
        generated, labels, test["images"], test["labels"], extractor, cfg, seed=seed
    )

    # Fig. 3 of the paper: group-mean differences, generated and real.
    diffs = {
        "generated": group_mean_differences(generated, labels),
        "real": group_mean_differences(test["images"], test["labels"]),
    }
    for kind, d in diffs.items():
        if d["differences"]:
            title = f"{kind}: differences of group-mean images"
            save_difference_figure(d["differences"], out / f"differences_{kind}.png", title=title)

    pixel_mm = pixel_mm_for(int(generated.shape[-1]))
    # Does the generator order the diagnoses as the real images do (ventricle area)?
    result["dx_area_mm2"] = {
        "generated": dx_areas(generated, labels, pixel_mm),
        "real": dx_areas(test["images"], test["labels"], pixel_mm),
    }
    result["effect"] = _effect(
        pipeline, panel, train_set, test_set, test, cfg, true_effect, pixel_mm, out, seed, progress
    )

    result["downstream"] = downstream_comparison(
        train["images"],
        train["labels"],
        test["images"],
        test["labels"],
        generated,
        labels,
        cfg,
        progress=progress,
    )

    def features(x: torch.Tensor) -> torch.Tensor:
        return extract_features(extractor, x)

    audit = memorisation_audit(
        generated, train["images"], test["images"], features=features, quantile=cfg.audit_quantile
    )
    audit["feature_extractor"] = extractor.name
    result["memorisation"] = audit
    (out / "evaluation.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    return result


def _effect(
    pipeline: G2IPipeline,
    panel: list[str],
    train_set: Dataset,
    test_set: Dataset,
    test: dict[str, torch.Tensor],
    cfg: EvaluationConfig,
    true_effect: dict[str, Any] | None,
    pixel_mm: float,
    out: Path,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Generated APOE e4 effect on ventricle area against the truth (a simulated cohort) or,
    without one, against the slope measured on the real images."""
    if pipeline.snp_encoder is None:
        return {"skipped": "label-only model: no genotype to vary"}
    if not apoe_columns_or_none(panel):
        return {"skipped": "no APOE e4 column in the panel"}
    real = real_slope(
        torch.utils.data.ConcatDataset([train_set, test_set]),
        panel,
        cfg.effect_bootstrap,
        seed,
        pixel_mm,
    )
    if true_effect is not None:
        reference, against = float(true_effect["slope_mm2_per_copy"]), "truth"
    else:
        reference, against = float(real["slope"]), "real images"
    if not np.isfinite(reference) or reference == 0:
        return {"skipped": f"the reference slope ({against}) is {reference}", "real": real}
    effect = effect_recovery(
        pipeline,
        panel,
        test["genotypes"],
        test["labels"],
        true_slope=reference,
        n_samples=cfg.effect_samples,
        n_boot=cfg.effect_bootstrap,
        seed=seed,
        pixel_mm=pixel_mm,
        progress=progress,
    )
    save_e4_figure(
        effect.pop("images"), effect["e4"], out / "apoe_effect.png", title="APOE e4 0 / 1 / 2"
    )
    for key in ("e4", "labels", "ventricle_area_mm2", "cortical_csf_fraction"):
        effect.pop(key, None)
    effect["reference"] = against
    effect["real"] = real
    if true_effect is not None:
        effect["truth"] = true_effect
    return effect


def apoe_columns_or_none(panel: list[str]) -> list[int]:
    """The APOE e4 columns of ``panel``, or [] when it has none."""
    try:
        return apoe_columns(panel)
    except EffectRecoveryError:
        return []


def to_jsonable(value: Any) -> Any:
    """Tensors and numpy values as plain lists and numbers; inf / nan as strings."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().numpy())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value
