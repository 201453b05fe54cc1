"""Cost of a DP-SGD optimiser step against a normal one, for the autoencoder and the LDM.

Both runs call the library's ``train_autoencoder`` / ``train_ldm`` on the same fixed batches;
the private run first goes through ``g2i_models.privacy.make_private`` (Opacus per-sample
gradients, clipping, noise) exactly as a federated site does in ``client.task._local_run``:
the autoencoder is driven through the wrapper's inner module, the LDM (SNP encoder + UNet,
autoencoder frozen) through the wrapper. Repeats alternate normal and private (order flipped
every repeat) so that load from other jobs hits both alike; the table gives median seconds
per step and their ratio. Peak memory: each (model, mode) once more in a fresh process:
its peak RSS (VmHWM) after ``--steps`` steps, and that peak minus the RSS once the models
are built. On two shared cores, ``--threads 1`` keeps other jobs from stalling torch's
threads (the paper-64 LDM pairs at 2 threads under load were not resolved).

Presets: ``tiny`` (64x64, batch 8; the default, about a minute on two quiet cores) and
``paper-64`` (the paper's channel widths on 64x64 slices, batch 4; about 10 minutes with the
settings below: per-sample gradients of the paper's 101 M-parameter LDM at 256x256 are out of reach
of a CPU run of minutes). Writes ``benchmarks/results/dp_step_cost.json``.

    python benchmarks/dp_step_cost.py
    python benchmarks/dp_step_cost.py --presets paper-64 --steps 1 --repeats 3 \
        --out benchmarks/results/dp_step_cost_paper64.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from conf.loader import load_config, to_object
from g2i_models.autoencoder import build_autoencoder, latent_size
from g2i_models.device import get_device
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.pipeline import library_versions
from g2i_models.privacy import PrivacyLedger, make_private
from g2i_models.train import train_autoencoder, train_ldm
from g2i_models.unet import build_denoiser

N_SNPS = 51  # the cohort's panel
N_TRAIN = 48  # site training set the sample rate is derived from (one tiny-cohort site)
# preset: (experiment, image size, batch size)
PRESETS = {"tiny": ("tiny", 64, 8), "paper-64": ("paper", 64, 4)}
MODES = ("normal", "dp")


def status_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in KiB. Unlike ``ru_maxrss``,
    the peak is not inherited from the parent across fork + exec."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def build_runner(preset: str, model: str, mode: str, device: torch.device) -> Callable[[int], Any]:
    """A function that takes ``n`` optimiser steps of ``model`` ("ae" or "ldm") in ``mode``."""
    experiment, size, batch_size = PRESETS[preset]
    cfg = load_config(experiment, f"data.image_size={size} privacy=dp_sgd")
    model_cfg, privacy = to_object(cfg.model), to_object(cfg.privacy)
    train_cfg = replace(to_object(cfg.train), batch_size=batch_size, ae_epochs=1, ldm_epochs=1)
    g = torch.Generator().manual_seed(0)
    items = [
        {
            "image": torch.rand(1, size, size, generator=g),
            "genotypes": torch.randint(0, 3, (N_SNPS,), generator=g),
            "label": torch.randint(0, 3, (), generator=g),
        }
        for _ in range(N_TRAIN)
    ]
    loader = DataLoader(items, batch_size=batch_size, drop_last=True)
    batch = next(iter(loader))
    torch.manual_seed(0)
    ae = build_autoencoder(model_cfg, size)
    trained = ae if model == "ae" else build_denoiser(model_cfg, N_SNPS, latent_size(ae))
    lr = train_cfg.lr_ae if model == "ae" else train_cfg.lr_ldm
    opt = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=train_cfg.weight_decay)
    net: torch.nn.Module = trained
    if mode == "dp":
        steps = 100  # only for the budget check and the noise multiplier
        run = make_private(trained, opt, loader, privacy, PrivacyLedger(), steps, steps)
        opt = run.optimizer
        # As client.task: the autoencoder through the wrapper's inner module, the LDM wrapped.
        net = run.module._module if model == "ae" else run.module
    scheduler = build_noise_scheduler(model_cfg)

    def steps_of(n: int) -> None:
        if model == "ae":
            train_autoencoder(net, [batch] * n, train_cfg, device, optimizer=opt)
        else:
            train_ldm(
                net, ae, scheduler, [batch] * n, train_cfg, device,
                cond_dropout=model_cfg.cond_dropout, optimizer=opt,
            )  # fmt: skip

    return steps_of


def time_pair(
    preset: str, model: str, steps: int, repeats: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    runners = {mode: build_runner(preset, model, mode, device) for mode in MODES}
    for run in runners.values():
        run(warmup)
    per_step: dict[str, list[float]] = {mode: [] for mode in MODES}
    for r in range(repeats):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            start = time.perf_counter()
            runners[mode](steps)
            per_step[mode].append((time.perf_counter() - start) / steps)
    median = {mode: statistics.median(v) for mode, v in per_step.items()}
    # The ratio of each repeat's pair, so that a burst of load does not land on one side only.
    ratios = [d / n for n, d in zip(per_step["normal"], per_step["dp"], strict=True)]
    return {
        "median_s_per_step": median,
        "ratio_of_medians": median["dp"] / median["normal"],
        "median_of_pair_ratios": statistics.median(ratios),
        "s_per_step": per_step,
    }


def peak_memory(preset: str, model: str, mode: str, steps: int, threads: int) -> dict[str, float]:
    """Peak RSS of a fresh process that builds the models and takes ``steps`` steps."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", preset, model, mode, str(steps), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(preset: str, model: str, mode: str, steps: int, threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    device = get_device("auto")
    run = build_runner(preset, model, mode, device)
    built = status_kib("VmRSS")
    run(steps)
    peak = status_kib("VmHWM")
    print(json.dumps({"peak_rss_mib": peak / 1024, "step_rss_mib": (peak - built) / 1024}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        preset, model, mode, steps, threads = sys.argv[2:7]
        child(preset, model, mode, int(steps), int(threads))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny"], choices=list(PRESETS))
    parser.add_argument("--models", nargs="+", default=["ae", "ldm"], choices=["ae", "ldm"])
    parser.add_argument("--steps", type=int, default=2, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7, help="alternating repeats per mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dp_step_cost.json"))
    args = parser.parse_args()
    device = get_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    for preset in args.presets:
        experiment, size, batch_size = PRESETS[preset]
        for model in args.models:
            row: dict[str, Any] = {
                "preset": preset,
                "experiment": experiment,
                "image_size": size,
                "batch_size": batch_size,
                "model": model,
                **time_pair(preset, model, args.steps, args.repeats, args.warmup, device),
            }
            if not args.no_memory:
                row["memory"] = {
                    m: peak_memory(preset, model, m, args.steps, args.threads) for m in MODES
                }
            rows.append(row)
            print(f"done: {preset} {model}", file=sys.stderr)
    result = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "versions": library_versions(),
        "rows": rows,
    }
    print(
        "| preset | model | batch | normal s/step | DP-SGD s/step | DP/normal (of medians) "
        "| DP/normal (median of pairs) | peak RSS MiB normal / DP |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["median_s_per_step"]
        mem = "-"
        if "memory" in r:
            peak = [r["memory"][m]["peak_rss_mib"] for m in MODES]
            mem = f"{peak[0]:.0f} / {peak[1]:.0f}"
        print(
            f"| {r['preset']} ({r['image_size']} px) | {r['model'].upper()} | {r['batch_size']} "
            f"| {m['normal']:.3f} | {m['dp']:.3f} | {r['ratio_of_medians']:.2f}x "
            f"| {r['median_of_pair_ratios']:.2f}x | {mem} |"
        )
    print(f"load average before / after: {load_before} / {result['load_average_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
