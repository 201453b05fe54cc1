"""Does the LDM use its conditions? Shuffled-condition loss deltas and the generated APOE e4
effect, per conditioning variant, at equal training (one autoencoder shared by all).

    python benchmarks/condition_use.py --data data/prepared-root --cohort data/cohort \
        --variants g2i_label_attn g2i_plus --ldm-steps 480

``--data`` is a folder of prepared sites (``g2i-prepare`` outputs, or a federation's); the
autoencoder is trained once through the training core (or loaded from ``--ae-dir``), then
each variant's LDM is trained by the same core for ``--ldm-steps`` steps with the same seed.
Reported per variant: held-out MSE, its rise when APOE e4 / whole genotypes / diagnoses are
shuffled across subjects (``g2i_models.train.condition_use``: > 0 means used), and the
generated e4 slope of ventricle area against the cohort's truth (paired, with its CI).
Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import load_config, to_object  # noqa: E402
from g2i_eval.effects import dx_areas, effect_recovery, real_slope  # noqa: E402
from g2i_eval.evaluation import conditions_from, stack_dataset  # noqa: E402
from g2i_eval.morphometry import pixel_mm_for  # noqa: E402
from g2i_models.autoencoder import (  # noqa: E402
    build_autoencoder,
    latent_moments,
    latent_size,
    scale_factor_from_moments,
    set_scale_factor,
)
from g2i_models.datasets import load_split, snp_names  # noqa: E402
from g2i_models.diffusion import build_noise_scheduler  # noqa: E402
from g2i_models.local_training import (  # noqa: E402
    derive_seed,
    e4_columns_of,
    make_loader,
    train_local,
)
from g2i_models.pipeline import G2IPipeline, generate  # noqa: E402
from g2i_models.plots import save_sample_grid  # noqa: E402
from g2i_models.train import condition_use, evaluate_autoencoder  # noqa: E402
from g2i_models.unet import build_denoiser  # noqa: E402
from simulations.truth_effects import true_ventricle_area_slope  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="prepared sites (pooled)")
    p.add_argument("--cohort", type=Path, default=None, help="cohort folder with truth/")
    p.add_argument("--experiment", default="tiny", help="the config the run starts from")
    p.add_argument("--variants", nargs="+", default=["g2i_label_attn", "g2i_plus"])
    p.add_argument("--ae-steps", type=int, default=240)
    p.add_argument("--ldm-steps", type=int, default=480)
    p.add_argument("--ae-dir", type=Path, default=None, help="reuse / save the autoencoder")
    p.add_argument("--effect-samples", type=int, default=8)
    p.add_argument("--dx-samples", type=int, default=24, help="images per diagnosis (areas)")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--genotype-guidance", type=float, default=None, help="genotype's own scale")
    p.add_argument("--threads", type=int, default=int(os.environ.get("G2I_THREADS", "1")))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ema", action="store_true", help="evaluate the EMA of the LDM weights (train.ema_decay)"
    )
    p.add_argument(
        "--grid", type=Path, default=None, help="write sample grids here (real.png, VARIANT.png)"
    )
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides (model, train)")
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "condition_use.json"
    )
    return p.parse_args(argv)


def dx_means(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean intensity of the pixels above 0.05 (the head), per diagnosis."""
    out = {}
    for k, name in enumerate(("CN", "MCI", "AD")):
        x = images[labels == k]
        out[name] = float(x[x > 0.05].mean()) if x.numel() else float("nan")
    return out


def save_grids(
    folder: Path,
    variant: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    test: dict,
    seed: int,
    per_class: int = 8,
) -> None:
    """``VARIANT.png`` (the first ``per_class`` generated images of each diagnosis) and
    ``real.png`` (as many real test images of each, drawn with ``seed``)."""

    def first(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor) -> tuple:
        keep = torch.cat([order[y[order] == k][:per_class] for k in range(3)])
        return x[keep], y[keep]

    gen = first(images, labels, torch.arange(labels.numel()))
    save_sample_grid(*gen, folder / f"{variant}.png", title=f"generated, {variant}")
    g = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(test["labels"])
    real = first(torch.as_tensor(test["images"]), y, torch.randperm(y.numel(), generator=g))
    save_sample_grid(*real, folder / "real.png", title="real test images")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.experiment, [f"data.root={args.data}", *args.overrides])
    data, train_cfg = to_object(cfg.data), to_object(cfg.train)
    train_cfg = replace(
        train_cfg,
        max_steps_ae=args.ae_steps,
        max_steps_ldm=args.ldm_steps,
        ae_epochs=10_000,
        ldm_epochs=10_000,
    )
    device = torch.device("cpu")
    train_set, val_set = load_split(data, "train"), load_split(data, "val")
    panel = snp_names(train_set)
    image_size = int(train_set[0]["image"].shape[-1])
    model_cfg = to_object(cfg.model)
    val_loader = DataLoader(val_set, batch_size=train_cfg.batch_size)

    start = time.perf_counter()
    if args.ae_dir is not None and (args.ae_dir / "config.json").is_file():
        ae = AutoencoderKL.from_pretrained(args.ae_dir)
    else:
        # the initialisation from the seed too: at 240 steps two inits differ by up to 4 dB
        torch.manual_seed(derive_seed(args.seed, "centralized", "ae-init", 0))
        ae = build_autoencoder(model_cfg, image_size)
        seed = derive_seed(args.seed, "centralized", "ae", 0)
        train_local("ae", ae, train_set, train_cfg, device, seed)
        scale_loader = make_loader(train_set, train_cfg.batch_size, args.seed)
        set_scale_factor(ae, scale_factor_from_moments(*latent_moments(ae, scale_loader, device)))
        if args.ae_dir is not None:
            ae.save_pretrained(args.ae_dir)
    ae_s = time.perf_counter() - start
    psnr = evaluate_autoencoder(ae, val_loader, device)["psnr"]
    truth = args.cohort / "truth" if args.cohort else None
    true = true_ventricle_area_slope(truth, data) if truth and truth.is_dir() else None
    test = stack_dataset(load_split(data, "test"))
    # the like-for-like reference of a diagnosis-conditioned generator: the training images'
    # own e4 slope within diagnoses (the e4 -> diagnosis path held out)
    real_within = real_slope(train_set, panel, n_boot=300, seed=args.seed)["within_diagnosis"]

    rows = []
    for variant in args.variants:
        mcfg = replace(model_cfg, variant=variant, sample_steps=args.sample_steps)
        torch.manual_seed(args.seed)
        denoiser = build_denoiser(mcfg, len(panel), latent_size(ae), panel)
        scheduler = build_noise_scheduler(mcfg)
        t0 = time.perf_counter()
        result = train_local(
            "ldm",
            denoiser,
            train_set,
            train_cfg,
            device,
            derive_seed(args.seed, "centralized", "ldm", 0),
            ae=ae,
            scheduler=scheduler,
            cond_dropout=mcfg.cond_dropout,
            genotype_dropout=mcfg.genotype_dropout,
            ema=args.ema,
        )
        seconds = time.perf_counter() - t0
        if result.ema_weights is not None:
            denoiser.load_state_dict(result.ema_weights)
        use = condition_use(
            denoiser, ae, scheduler, val_loader, device, e4_columns_of(val_set), repeats=8
        )
        row = {"variant": variant, "ldm_steps": result.metrics["steps"], "ldm_s": seconds}
        row.update(use)
        if true is not None and denoiser.snp_encoder is not None:
            pipe = G2IPipeline.from_parts(
                ae,
                denoiser,
                scheduler,
                sample_steps=args.sample_steps,
                guidance_scale=args.guidance,
                genotype_guidance_scale=args.genotype_guidance,
            )
            effect = effect_recovery(
                pipe,
                panel,
                test["genotypes"],
                test["labels"],
                true_slope=float(true["slope_mm2_per_copy"]),
                n_samples=args.effect_samples,
                n_boot=300,
                seed=args.seed,
            )
            paired = effect["paired"]
            genotypes, labels = conditions_from(test, args.dx_samples, 3)
            images = generate(pipe, genotypes, labels, seed=args.seed).cpu()
            pixel_mm = pixel_mm_for(int(images.shape[-1]))
            row["dx_area_mm2"] = dx_areas(images, labels, pixel_mm)
            row["dx_area_mm2_real"] = dx_areas(test["images"], test["labels"], pixel_mm)
            # brain-masked mean intensity per diagnosis: the ventricle measure thresholds at
            # a fraction of white matter, so a darker or flatter image changes the areas
            row["dx_mean_intensity"] = dx_means(images, labels)
            row["dx_mean_intensity_real"] = dx_means(test["images"], test["labels"])
            if args.grid is not None:
                save_grids(args.grid, variant, images, labels, test, args.seed)
            row.update(
                e4_ratio=paired["ratio"],
                e4_ci=[paired["ratio_ci_low"], paired["ratio_ci_high"]],
                e4_steps=effect["steps"],
            )
            if real_within is not None:
                row["e4_ratio_real_within_dx"] = paired["slope"] / real_within["slope"]
        rows.append(row)
        print(json.dumps(row))
    out = {
        "data": str(args.data),
        "ae_steps": args.ae_steps,
        "ae_val_psnr": psnr,
        "ae_s": ae_s,
        "threads": args.threads,
        "guidance": args.guidance,
        "ema": args.ema,
        "genotype_guidance": args.genotype_guidance,
        "overrides": args.overrides,
        "load_average": os.getloadavg(),
        "true_slope_mm2_per_copy": None if true is None else true["slope_mm2_per_copy"],
        # the e4 ratio vs truth a perfect generator reaches here (at a fixed diagnosis)
        "attainable_e4_ratio": None
        if true is None or not true.get("attainable")
        else true["attainable"]["ratio_at_fixed_dx"],
        "real_within_dx_slope_train": real_within,
        "variants": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    header = (
        "| variant | MSE | +shuffle e4 | +shuffle genotypes | +shuffle DX | e4 ratio [CI] "
        "| vs real within-dx |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ci = r.get("e4_ci")
        ratio = f"{r['e4_ratio']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"
        vs_real = r.get("e4_ratio_real_within_dx")
        print(
            f"| {r['variant']} | {r['mse']:.4f} | {r.get('shuffle-e4', float('nan')):+.5f} | "
            f"{r['shuffle-genotypes']:+.5f} | {r['shuffle-dx']:+.5f} | {ratio} | "
            f"{'-' if vs_real is None else f'{vs_real:.2f}'} |"
        )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
