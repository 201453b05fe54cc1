"""``g2i-evaluate``: score a trained model folder on real data, against the cohort's truth.

    g2i-evaluate run_dir=runs/fed_tiny                      # the federation's model
    g2i-evaluate run_dir=runs/tiny data.root=data/cohort    # any run folder, any prepared data
    g2i-evaluate run_dir=runs/x evaluation.feature_extractor=inception \\
        evaluation.inception_weights=/models/inception_v3.pth

Arguments are Hydra overrides of the root config (as for ``g2i-train``). The model is
``<run_dir>/model``; the real data are the prepared sites under ``data.root`` (train split
for the feature extractor, the classifier and the audit; test split for the metrics); the
truth folder is ``evaluation.truth_dir``, else ``<data.root>/truth`` when it exists. Writes
``<run_dir>/evaluation/`` (evaluation.json, figures) and prints a summary.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conf.loader import load_config, to_object
from conf.schema import DataConfig, EvaluationConfig
from g2i_eval.classifier import ARMS
from g2i_eval.evaluation import evaluate_model
from g2i_eval.features import FeatureExtractor, FeatureExtractorError
from g2i_models.cli import setup_logging
from g2i_models.datasets import DataSourceError, load_split, snp_names
from g2i_models.device import get_device
from g2i_models.pipeline import G2IPipeline
from simulations.truth_effects import true_ventricle_area_slope

USAGE = __doc__


def truth_folder(cfg: EvaluationConfig, data: DataConfig) -> Path | None:
    """``evaluation.truth_dir`` (must exist), else ``<data.root>/truth`` if present."""
    if cfg.truth_dir:
        path = Path(cfg.truth_dir)
        if not (path / "effects.json").is_file():
            raise FileNotFoundError(
                f"evaluation.truth_dir={path}: no effects.json there (a g2i-simulate truth folder)"
            )
        return path
    path = Path(data.root) / "truth"
    return path if (path / "effects.json").is_file() else None


def run_evaluation(
    cfg: Any,
    out_dir: Path | None = None,
    progress: bool = True,
    extractor: FeatureExtractor | None = None,
) -> dict[str, Any]:
    """Evaluate ``<cfg.run_dir>/model`` on ``cfg.data``; returns the results. ``extractor``
    overrides ``cfg.evaluation``'s (a study shares one across its models)."""
    data: DataConfig = to_object(cfg.data)
    ev: EvaluationConfig = to_object(cfg.evaluation)
    run = Path(cfg.run_dir)
    model_dir = run / "model"
    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: no saved model (model_index.json); train one with g2i-train or "
            "flwr run first, or point run_dir at its run folder"
        )
    pipeline = G2IPipeline.from_pretrained(model_dir).to(get_device(to_object(cfg.train).device))
    train_set = load_split(data, "train", seed=cfg.seed)
    test_set = load_split(data, "test", seed=cfg.seed)
    if len(test_set) == 0:
        test_set = load_split(data, "val", seed=cfg.seed)
    panel = snp_names(train_set)
    truth = truth_folder(ev, data)
    true_effect = true_ventricle_area_slope(truth, data) if truth is not None else None
    return evaluate_model(
        pipeline,
        panel,
        train_set,
        test_set,
        ev,
        out_dir or run / "evaluation",
        true_effect=true_effect,
        extractor=extractor,
        seed=cfg.seed,
        progress=progress,
    )


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few lines a person reads first."""
    img = result["image"]
    lines = [f"features: {result['feature_extractor']}"]
    fid = img["fid_kid"]
    real = img["against_real"]
    lines.append(f"FID {fid['fid']:.2f}  KID {fid['kid_mean']:.4f} +- {fid['kid_std']:.4f}")
    lines.append(
        f"against real (same diagnosis): PSNR {real['psnr']:.2f} dB, SSIM {real['ssim']:.3f}, "
        f"MS-SSIM {real['ms_ssim']:.3f}"
    )
    eff = result.get("effect", {})
    if "ratio" in eff:
        lines.append(
            f"APOE e4 effect on ventricle area: generated/true = {eff['ratio']:.2f} "
            f"[{eff['ratio_ci_low']:.2f}, {eff['ratio_ci_high']:.2f}]"
        )
    down = result.get("downstream", {})
    for arm in ARMS:
        if arm in down:
            acc = down[arm]["accuracy"]
            lines.append(f"classifier ({arm}): accuracy {acc['mean']:.3f} +- {acc['sd']:.3f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    setup_logging()
    cfg = load_config(None, args)
    try:
        result = run_evaluation(cfg)
    except (DataSourceError, FileNotFoundError, FeatureExtractorError) as err:
        print(f"g2i-evaluate: {err}", file=sys.stderr)
        return 2
    for line in summary_lines(result):
        print(line)
    out = Path(cfg.run_dir) / "evaluation"
    print(f"results and figures written to {out} (evaluation.json)")
    return 0
