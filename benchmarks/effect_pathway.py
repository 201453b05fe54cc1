"""Where do the generated effects shrink? The diagnosis and APOE e4 effects on ventricle area
measured at each stage a generated image passes through, for saved models:

1. the real images (test split for the per-diagnosis areas; train + test for the e4 slope
   within diagnoses, the like-for-like reference of a diagnosis-conditioned generator);
2. the same images through the model's autoencoder (encode, posterior mode, decode): what
   the latent space can carry at best;
3. generated images at several sampler settings (sampler, steps, guidance scale): the e4
   slope from images paired on their noise at e4 = 0/1/2, and the areas per diagnosis.

    python benchmarks/effect_pathway.py --data DIR/prepared --cohort DIR \
        --models STUDY/cells/centralized-g2i_plus-none/model --settings ddpm:20:1.5 ddpm:100:1.5

``--ae-steps 240 960 ...`` instead trains fresh autoencoders (the experiment's, through the
training core on the pooled training split) for those numbers of steps and reports stage 2
for each: how much of the real effects the latent space keeps as the autoencoder trains.

Prints a table and writes JSON (``--out``). One torch thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import load_config, to_object  # noqa: E402
from g2i_eval.effects import (  # noqa: E402
    dx_areas,
    e4_counts,
    effect_recovery,
    within_group_slope,
)
from g2i_eval.evaluation import conditions_from, stack_dataset  # noqa: E402
from g2i_eval.morphometry import measure, pixel_mm_for  # noqa: E402
from g2i_models.autoencoder import decode_latents, encode_latents  # noqa: E402
from g2i_models.datasets import load_split, snp_names  # noqa: E402
from g2i_models.pipeline import G2IPipeline, generate  # noqa: E402
from simulations.truth_effects import true_ventricle_area_slope  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="prepared sites (pooled)")
    p.add_argument("--cohort", type=Path, required=True, help="cohort folder with truth/")
    p.add_argument("--models", type=Path, nargs="*", default=[], help="saved pipelines")
    p.add_argument(
        "--ae-steps", type=int, nargs="*", default=[], help="train autoencoders this long"
    )
    p.add_argument(
        "--ae-seeds",
        type=int,
        nargs="*",
        default=None,
        help="with --ae-steps: one autoencoder per seed and length (default: --seed only)",
    )
    p.add_argument("--experiment", default="fed_tiny", help="config for the data settings")
    p.add_argument(
        "--settings",
        nargs="+",
        default=["ddpm:20:1.5", "ddpm:100:1.5", "ddim:50:1.5"],
        help="sampler:steps:guidance to generate with",
    )
    p.add_argument("--effect-samples", type=int, default=12, help="noise draws per diagnosis")
    p.add_argument("--dx-samples", type=int, default=24, help="images per diagnosis (areas)")
    p.add_argument("--bootstrap", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("G2I_THREADS", "1")))
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "effect_pathway.json"
    )
    return p.parse_args(argv)


def _setting(text: str) -> tuple[str, int, float]:
    sampler, steps, guidance = text.split(":")
    return sampler, int(steps), float(guidance)


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Images (N, 1, H, W) in [0, 1] through the autoencoder (posterior mode), in [0, 1]."""
    out = []
    for a in range(0, images.shape[0], batch):
        out.append(decode_latents(vae, encode_latents(vae, images[a : a + batch], mode=True)))
    return torch.cat(out)


class Stages:
    """The real slices (test split first, then train) and how stages 1-2 measure them."""

    def __init__(self, args: argparse.Namespace, data) -> None:
        self.train_set = load_split(data, "train")
        self.panel = snp_names(self.train_set)
        self.test = stack_dataset(load_split(data, "test"))
        both = [self.test, stack_dataset(self.train_set)]
        self.images = torch.cat([d["images"] for d in both])
        self.labels = torch.cat([d["labels"] for d in both])
        self.e4 = e4_counts(torch.cat([d["genotypes"] for d in both]), self.panel)
        self.n_test = int(self.test["labels"].shape[0])
        self.pixel_mm = pixel_mm_for(int(self.images.shape[-1]))
        self.n_boot, self.seed = args.bootstrap, args.seed

    def measure(self, images: torch.Tensor) -> dict:
        """Areas per diagnosis (the test rows) and the e4 slope within diagnoses (all rows
        whose e4 count is known) of ``images``, row for row the real slices or their
        reconstructions."""
        area = measure(images, self.pixel_mm)["ventricle_area_mm2"]
        known = self.e4 >= 0
        within = within_group_slope(
            area[known], self.e4[known], self.labels[known], self.n_boot, self.seed
        )
        t = slice(0, self.n_test)
        return {
            "dx_area_mm2": dx_areas(images[t], self.labels[t], self.pixel_mm),
            "e4_within_dx": within,
        }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.experiment, [f"data.root={args.data}"])
    data = to_object(cfg.data)
    st = Stages(args, data)
    test, pixel_mm, panel = st.test, st.pixel_mm, st.panel
    true = float(true_ventricle_area_slope(args.cohort / "truth", data)["slope_mm2_per_copy"])
    real = st.measure(st.images)
    rows = []
    if args.ae_steps:
        rows += _autoencoders(args, cfg, st)
    for model_dir in args.models:
        pipe = G2IPipeline.from_pretrained(model_dir)
        names = list(pipe.config.panel["snp_names"]) if pipe.config.panel else None
        if names != panel:
            raise SystemExit(
                f"{model_dir}: the saved model's SNP panel is not the panel of {args.data}; "
                "pass the prepared data the model was trained on"
            )
        t0 = time.perf_counter()
        ae = st.measure(reconstruct(pipe.vae, st.images))
        ae["seconds"] = time.perf_counter() - t0
        generated = []
        for text in args.settings:
            sampler, steps, guidance = _setting(text)
            pipe.register_to_config(sampler=sampler, sample_steps=steps, guidance_scale=guidance)
            t0 = time.perf_counter()
            effect = effect_recovery(
                pipe,
                panel,
                test["genotypes"],
                test["labels"],
                true_slope=true,
                n_samples=args.effect_samples,
                n_boot=args.bootstrap,
                seed=args.seed,
                pixel_mm=pixel_mm,
            )
            genotypes, dx = conditions_from(test, args.dx_samples, 3)
            x = generate(pipe, genotypes, dx, seed=args.seed).float().cpu()
            paired = effect["paired"]
            generated.append(
                {
                    "setting": text,
                    "dx_area_mm2": dx_areas(x, dx, pixel_mm),
                    "e4_paired_slope": paired["slope"],
                    "e4_paired_ci": [paired["ci_low"], paired["ci_high"]],
                    "e4_steps": effect["steps"],
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(json.dumps({"model": str(model_dir), **generated[-1]}), flush=True)
        rows.append({"model": str(model_dir), "autoencoder": ae, "generated": generated})
    out = {
        "data": str(args.data),
        "true_slope_mm2_per_copy": true,
        "real": real,
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"truth: {true:.0f} mm^2 per e4 copy")
    print("| model | stage | CN / MCI / AD area (mm^2) | e4 slope within dx (mm^2/copy) [CI] |")
    print("|---|---|---|---|")
    print(f"| real images | | {_areas(real['dx_area_mm2'])} | {_within(real)} |")
    for r in rows:
        name = (
            Path(r["model"]).parent.name
            if "model" in r
            else f"AE {r['ae_steps']} steps, seed {r['ae_seed']}"
        )
        ae = r["autoencoder"]
        print(f"| {name} | autoencoder | {_areas(ae['dx_area_mm2'])} | {_within(ae)} |")
        if "ae_steps" in r:
            print(f"| {name} | (validation PSNR {r['psnr']:.1f} dB, {r['seconds']:.0f} s) | | |")
        for g in r.get("generated", []):
            lo, hi = g["e4_paired_ci"]
            print(
                f"| {name} | {g['setting']} | {_areas(g['dx_area_mm2'])} | "
                f"{g['e4_paired_slope']:.0f} [{lo:.0f}, {hi:.0f}] (paired) |"
            )
    print(f"written {args.out}")
    return 0


def _autoencoders(args: argparse.Namespace, cfg, st: Stages) -> list[dict]:
    """Stage 2 for a fresh autoencoder per ``args.ae_steps`` and seed (``--ae-seeds``): with
    one seed the runs differ only in length, with several the spread over seeds shows."""
    from dataclasses import replace

    from torch.utils.data import DataLoader

    from g2i_models.autoencoder import build_autoencoder
    from g2i_models.local_training import derive_seed, train_local
    from g2i_models.train import evaluate_autoencoder

    val_set = load_split(to_object(cfg.data), "val")
    out = []
    for seed in args.ae_seeds if args.ae_seeds else [args.seed]:
        for steps in args.ae_steps:
            train_cfg = replace(to_object(cfg.train), max_steps_ae=steps, ae_epochs=100_000)
            # initialisation and training stream both from the seed
            torch.manual_seed(derive_seed(seed, "centralized", "ae-init", 0))
            ae = build_autoencoder(to_object(cfg.model), int(st.images.shape[-1]))
            t0 = time.perf_counter()
            train_local("ae", ae, st.train_set, train_cfg, torch.device("cpu"),
                        derive_seed(seed, "centralized", "ae", 0))  # fmt: skip
            seconds = time.perf_counter() - t0
            loader = DataLoader(val_set, batch_size=train_cfg.batch_size)
            psnr = evaluate_autoencoder(ae, loader, torch.device("cpu"))["psnr"]
            row = {"ae_steps": steps, "ae_seed": seed, "seconds": seconds, "psnr": psnr,
                   "autoencoder": st.measure(reconstruct(ae, st.images))}  # fmt: skip
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def _within(stage: dict) -> str:
    w = stage["e4_within_dx"]
    return f"{w['slope']:.0f} [{w['ci_low']:.0f}, {w['ci_high']:.0f}]"


def _areas(a: dict[str, float]) -> str:
    return " / ".join(f"{a[k]:.0f}" for k in ("CN", "MCI", "AD") if k in a)


if __name__ == "__main__":
    raise SystemExit(main())
