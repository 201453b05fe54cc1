"""Training speed of the autoencoder and the LDM (steps per second) for model presets.

Times the library's own ``train_autoencoder`` / ``train_ldm`` on one repeated synthetic batch,
after warm-up steps, and writes ``benchmarks/results/train_speed.json``.

    python benchmarks/train_speed.py                    # tiny and paper, batch 8
    python benchmarks/train_speed.py --experiments tiny --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from conf.loader import load_config, to_object
from g2i_models.autoencoder import build_autoencoder, latent_size
from g2i_models.device import get_device
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.pipeline import library_versions
from g2i_models.train import train_autoencoder, train_ldm
from g2i_models.unet import build_denoiser

N_SNPS = 50


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def measure(experiment: str, steps: int, warmup: int, batch_size: int, device: torch.device):
    """Steps/s of one AE and one LDM training step for an experiment's model preset."""
    cfg = load_config(experiment)
    model_cfg = to_object(cfg.model)
    train_cfg = replace(to_object(cfg.train), batch_size=batch_size)
    size = cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(batch_size, 1, size, size, generator=g),
        "genotypes": torch.randint(0, 3, (batch_size, N_SNPS), generator=g),
        "label": torch.randint(0, 3, (batch_size,), generator=g),
    }
    ae = build_autoencoder(model_cfg, size)
    denoiser = build_denoiser(model_cfg, N_SNPS, latent_size(ae))
    scheduler = build_noise_scheduler(model_cfg)

    def ae_run(n: int) -> None:
        train_autoencoder(ae, [batch] * n, replace(train_cfg, ae_epochs=1), device)

    def ldm_run(n: int) -> None:
        train_ldm(
            denoiser,
            ae,
            scheduler,
            [batch] * n,
            replace(train_cfg, ldm_epochs=1),
            device,
            cond_dropout=model_cfg.cond_dropout,
        )

    row: dict[str, object] = {
        "experiment": experiment,
        "image_size": size,
        "latent_size": latent_size(ae),
        "batch_size": batch_size,
        "ae_params_m": sum(p.numel() for p in ae.parameters()) / 1e6,
        "ldm_params_m": sum(p.numel() for p in denoiser.parameters()) / 1e6,
    }
    for name, run in (("ae", ae_run), ("ldm", ldm_run)):
        run(warmup)
        start = time.perf_counter()
        run(steps)
        row[f"{name}_steps_per_s"] = steps / (time.perf_counter() - start)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed.json"))
    args = parser.parse_args()
    device = get_device(args.device)
    rows = [measure(e, args.steps, args.warmup, args.batch_size, device) for e in args.experiments]
    result = {
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "versions": library_versions(),
        "rows": rows,
    }
    print(f"device: {result['device']} ({result['precision']})")
    print(
        "| experiment | image | latent | batch | AE M params | AE steps/s | LDM M params "
        "| LDM steps/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['experiment']} | {r['image_size']} | {r['latent_size']} | {r['batch_size']} "
            f"| {r['ae_params_m']:.1f} | {r['ae_steps_per_s']:.2f} "
            f"| {r['ldm_params_m']:.1f} | {r['ldm_steps_per_s']:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
