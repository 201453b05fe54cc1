"""How much of the APOE e4 effect survives the autoencoder? The real images' e4 slope of
ventricle area against the same slope on their autoencoder reconstructions.

    python benchmarks/reconstruction_effect.py --model RUN/model --data COHORT/prepared \
        --cohort COHORT [--out benchmarks/results/reconstruction_effect.json]

The latent diffusion model generates latents that the autoencoder decodes, so a generator can
show no more of the e4 effect than the reconstructions of real images keep: their slope over
the real images' slope is the ceiling the autoencoder sets. Both slopes are fitted the same
way (``g2i_eval.effects.real_slope``: pooled, and within diagnoses, the like-for-like
reference of a diagnosis-conditioned generator), on the training and test splits of the
prepared sites together, as the study's evaluation does; with ``--cohort``, also against the
cohort's true slope. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch.utils.data import ConcatDataset, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import load_config, to_object  # noqa: E402
from g2i_eval.effects import real_slope  # noqa: E402
from g2i_eval.morphometry import measure, pixel_mm_for  # noqa: E402
from g2i_models.autoencoder import decode_latents, encode_latents  # noqa: E402
from g2i_models.datasets import load_split, snp_names  # noqa: E402
from simulations.truth_effects import true_ventricle_area_slope  # noqa: E402


class Reconstructed(Dataset):
    """The items of ``base`` with each image replaced by its autoencoder reconstruction."""

    def __init__(self, base: Dataset, images: torch.Tensor) -> None:
        self.base, self.images = base, images

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], "image": self.images[i]}


@torch.no_grad()
def reconstruct(ae: AutoencoderKL, dataset: Dataset, batch: int = 32) -> torch.Tensor:
    """Every image of ``dataset`` through the autoencoder (posterior mode, as the evaluation
    reconstructs): (N, 1, H, W) in [0, 1]."""
    out = []
    for a in range(0, len(dataset), batch):  # type: ignore[arg-type]
        x = torch.stack([dataset[i]["image"] for i in range(a, min(a + batch, len(dataset)))])
        out.append(decode_latents(ae, encode_latents(ae, x.float(), mode=True)))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", type=Path, required=True, help="a model folder (with vae/) or an autoencoder's"
    )
    p.add_argument("--data", type=Path, required=True, help="the prepared sites' root")
    p.add_argument("--cohort", type=Path, default=None, help="the cohort (its truth/ folder)")
    p.add_argument("--experiment", default="fed_tiny")
    p.add_argument("--boot", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = to_object(load_config(args.experiment, [f"data.root={args.data}"]).data)
    real = ConcatDataset([load_split(data, "train"), load_split(data, "test")])
    panel = snp_names(real)
    ae_dir = args.model / "vae" if (args.model / "vae").is_dir() else args.model
    ae = AutoencoderKL.from_pretrained(ae_dir).eval()
    t0 = time.perf_counter()
    recon = Reconstructed(real, reconstruct(ae, real))
    seconds = time.perf_counter() - t0
    fits = {
        "real": real_slope(real, panel, args.boot, seed=0),
        "reconstructed": real_slope(recon, panel, args.boot, seed=0),
    }
    # the autoencoder's gain on ventricle area: reconstructed area regressed on the real one
    # over every image (1 = differences kept, < 1 = shrunk), far tighter than the e4 slopes
    pixel_mm = pixel_mm_for(int(recon.images.shape[-1]))
    real_x = torch.stack([real[i]["image"][:1] for i in range(len(real))]).float()
    a_real = measure(real_x, pixel_mm)["ventricle_area_mm2"].double()
    a_rec = measure(recon.images[:, :1].float(), pixel_mm)["ventricle_area_mm2"].double()
    dr = a_real - a_real.mean()
    area_gain = float((dr * (a_rec - a_rec.mean())).sum() / (dr * dr).sum())
    area_corr = float(torch.corrcoef(torch.stack([a_real, a_rec]))[0, 1])
    truth = None
    if args.cohort is not None and (args.cohort / "truth").is_dir():
        truth = float(true_ventricle_area_slope(args.cohort / "truth", data)["slope_mm2_per_copy"])
    rows = []
    for name, fit in fits.items():
        within = fit["within_diagnosis"] or {}
        row = {
            "images": name,
            "n": fit["n"],
            "pooled_slope": fit["slope"],
            "pooled_ci": [fit["ci_low"], fit["ci_high"]],
            "within_dx_slope": within.get("slope"),
            "within_dx_ci": [within.get("ci_low"), within.get("ci_high")],
            "steps": fit["steps"],
        }
        if truth:
            row["within_dx_vs_truth"] = (
                None if row["within_dx_slope"] is None else (row["within_dx_slope"] / truth)
            )
        rows.append(row)
    keep = {}
    for key in ("pooled_slope", "within_dx_slope"):
        a, b = rows[0][key], rows[1][key]
        keep[key.replace("_slope", "")] = None if not a or b is None else b / a
    print(
        "\n| images | n | pooled slope (mm²/copy) [95% CI] | within-diagnosis slope [95% CI] |"
        + (" within-dx / truth |" if truth else "")
    )
    print("|---|---|---|---|" + ("---|" if truth else ""))
    for r in rows:
        lo, hi = r["within_dx_ci"]
        line = (
            f"| {r['images']} | {r['n']} | {r['pooled_slope']:.0f} [{r['pooled_ci'][0]:.0f}, "
            f"{r['pooled_ci'][1]:.0f}] | {r['within_dx_slope']:.0f} [{lo:.0f}, {hi:.0f}] |"
        )
        if truth:
            line += f" {r['within_dx_vs_truth']:.2f} |"
        print(line)
    print(
        f"\nreconstructed / real slope: pooled {keep['pooled']:.2f}, within diagnoses "
        f"{keep['within_dx']:.2f}; ventricle area, reconstructed on real: slope "
        f"{area_gain:.2f}, r {area_corr:.2f} (mean {a_rec.mean():.0f} vs {a_real.mean():.0f} "
        f"mm²); true slope {truth}; {seconds:.1f} s to reconstruct"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "model": str(args.model),
            "data": str(args.data),
            "true_slope": truth,
            "rows": rows,
            "kept_by_autoencoder": keep,
            "area_gain": area_gain,
            "area_corr": area_corr,
            "mean_area_mm2": {"real": float(a_real.mean()), "reconstructed": float(a_rec.mean())},
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
