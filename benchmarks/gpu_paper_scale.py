"""Paper-preset speed on one CUDA GPU (256x256 slices, 64x64 latents), in one run.

Measures, each part time-boxed, the whole under ``--budget-s`` (default 540 s):

1. training throughput of the autoencoder and the LDM through the training core
   (``train_local``) in images/s: fp32 eager, bf16 autocast at a few batch sizes, then
   + channels-last, then + torch.compile; peak memory (``torch.cuda.max_memory_allocated``)
   and the achieved model FLOP utilisation (the FLOPs of one training step counted with
   ``torch.utils.flop_counter.FlopCounterMode``, over the device's peak dense bf16 FLOP/s
   from ``PEAK_BF16_TFLOPS``; the LDM step counts the frozen encoder's forward too);
2. batched generation (DDIM, 50 steps, the preset's guidance) in images/s, against one
   image per call;
3. one federated round (autoencoder, then LDM) of three simulated sites sharing the GPU:
   three sequential ``train_local`` calls per phase on three sites' synthetic data, then the
   FedAvg mean of their weights. Not through Flower: a ``flwr run`` with Ray and the cohort
   simulation does not fit the time box; the local work per site is the same core.

    python benchmarks/gpu_paper_scale.py            # on a CUDA machine
    python benchmarks/gpu_paper_scale.py --smoke    # every code path on tiny shapes, on CPU

Prints a table and writes ``benchmarks/results/gpu_paper_scale.json``
(``--smoke``: ``gpu_paper_scale_smoke.json``; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from conf.loader import load_config, to_object
from conf.schema import ModelConfig, TrainConfig
from g2i_models.autoencoder import build_autoencoder, latent_size, set_scale_factor
from g2i_models.datasets import SyntheticSliceDataset
from g2i_models.device import autocast, get_device
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.local_training import derive_seed, load_weights, train_local
from g2i_models.pipeline import G2IPipeline, generate, library_versions
from g2i_models.unet import build_denoiser

N_SNPS = 50
OUT = Path("benchmarks/results")

# Peak dense (no sparsity) bf16 tensor-core FLOP/s, from the vendors' data sheets; the first
# key found in the device name is used (H100: the SXM figure; a PCIe card has ~756).
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}

@dataclass
class Plan:
    """What one run measures; ``smoke`` shrinks every part to seconds on a CPU."""

    image_size: int
    ae_batches: list[int]
    ldm_batches: list[int]
    warmup_steps: int
    timed_steps: int
    seconds_per_row: float
    gen_images: int
    gen_batches: list[int]
    gen_steps: int
    site_images: int
    site_steps: int
    compile_backend: str
    model: ModelConfig = field(repr=False, default_factory=ModelConfig)


def make_plan(smoke: bool) -> Plan:
    """The paper preset; ``smoke``: the tiny preset on 32x32 slices (8x8 latents)."""
    cfg = load_config("tiny" if smoke else "paper")
    model: ModelConfig = to_object(cfg.model)
    if smoke:
        return Plan(
            image_size=32,
            ae_batches=[2],
            ldm_batches=[2],
            warmup_steps=1,
            timed_steps=1,
            seconds_per_row=1.0,
            gen_images=4,
            gen_batches=[4],
            gen_steps=2,
            site_images=2,
            site_steps=1,
            # Inductor needs a C++ toolchain and minutes of CPU: the smoke run traces only.
            compile_backend="eager",
            model=model,
        )
    return Plan(
        image_size=int(cfg.data.image_size),
        ae_batches=[8, 16, 32],
        ldm_batches=[16, 32, 64],
        warmup_steps=3,
        timed_steps=30,
        seconds_per_row=8.0,
        gen_images=64,
        gen_batches=[16, 64],
        gen_steps=50,
        site_images=64,
        site_steps=20,
        compile_backend="inductor",
        model=model,
    )


class InMemory(Dataset):
    """A ``SyntheticSliceDataset`` rendered once, so the loader does not limit the GPU."""

    def __init__(self, n: int, image_size: int, seed: int) -> None:
        source = SyntheticSliceDataset(n, image_size, n_snps=N_SNPS, seed=seed)
        self.items = [
            {k: v for k, v in source[i].items() if k != "subject_id"} for i in range(n)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def peak_tflops(name: str) -> tuple[float | None, str | None]:
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops, key
    return None, None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


class Clock:
    """The run's time box: parts ask how much is left before they start."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget_s = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)


def build_models(plan: Plan, device: torch.device):
    torch.manual_seed(0)
    ae = build_autoencoder(plan.model, plan.image_size).to(device)
    set_scale_factor(ae, 1.0)
    denoiser = build_denoiser(plan.model, N_SNPS, latent_size(ae)).to(device)
    return ae, denoiser, build_noise_scheduler(plan.model)


def run_phase(
    phase: str,
    plan: Plan,
    models: tuple[Any, Any, Any],
    data: Dataset,
    cfg: TrainConfig,
    device: torch.device,
    seed: int = 0,
) -> dict[str, float]:
    ae, denoiser, scheduler = models
    if phase == "ae":
        return train_local("ae", ae, data, cfg, device, seed).metrics
    kw = {"ae": ae, "scheduler": scheduler, "cond_dropout": plan.model.cond_dropout}
    return train_local("ldm", denoiser, data, cfg, device, seed, **kw).metrics


def step_flops(phase: str, plan: Plan, data: Dataset, batch: int, device: torch.device) -> int:
    """FLOPs of one eager fp32 training step (forward + backward) at ``batch``."""
    cfg = TrainConfig(batch_size=batch, ae_epochs=1, ldm_epochs=1, max_steps_ae=1)
    cfg = replace(cfg, max_steps_ldm=1, mixed_precision="no")
    models = build_models(plan, device)
    with FlopCounterMode(display=False) as counter:
        run_phase(phase, plan, models, data, cfg, device)
    return int(counter.get_total_flops())


VARIANTS: dict[str, dict[str, Any]] = {
    "fp32 eager": {"mixed_precision": "no"},
    "bf16": {"mixed_precision": "bf16"},
    "bf16 + channels-last": {"mixed_precision": "bf16", "channels_last": True},
    "bf16 + channels-last + compile": {
        "mixed_precision": "bf16",
        "channels_last": True,
        "compile": True,
    },
}


def training_rows(
    phase: str, plan: Plan, device: torch.device, clock: Clock, peak: float | None
) -> list[dict[str, Any]]:
    """images/s, peak memory and MFU of one phase for each variant and batch size."""
    batches = plan.ae_batches if phase == "ae" else plan.ldm_batches
    data = InMemory(2 * max(batches), plan.image_size, seed=1)
    flops_per_image = step_flops(phase, plan, data, batches[0], device) / batches[0]
    cells = [("fp32 eager", batches[0])] + [("bf16", b) for b in batches]
    cells += [(v, batches[-1]) for v in ("bf16 + channels-last", "bf16 + channels-last + compile")]
    rows = []
    for variant, batch in cells:
        row: dict[str, Any] = {"phase": phase, "variant": variant, "batch_size": batch}
        # A compile needs minutes for the paper networks: not started without them.
        needed = 4 * plan.seconds_per_row + (150 if "compile" in variant else 0)
        if device.type == "cuda" and clock.left() < needed:
            rows.append({**row, "skipped": f"time box ({clock.left():.0f} s left)"})
            continue
        cfg = TrainConfig(batch_size=batch, ae_epochs=10_000, ldm_epochs=10_000)
        cfg = replace(cfg, compile_backend=plan.compile_backend, **VARIANTS[variant])
        models = build_models(plan, device)
        reset_memory(device)
        warm = time.perf_counter()
        warmup = replace(cfg, max_steps_ae=plan.warmup_steps, max_steps_ldm=plan.warmup_steps)
        run_phase(phase, plan, models, data, warmup, device)
        sync(device)
        warmup_s = time.perf_counter() - warm
        timed = replace(
            cfg,
            max_steps_ae=plan.timed_steps,
            max_steps_ldm=plan.timed_steps,
            max_seconds_ae=plan.seconds_per_row,
            max_seconds_ldm=plan.seconds_per_row,
        )
        metrics = run_phase(phase, plan, models, data, timed, device, seed=1)
        sync(device)
        images_per_s = metrics["num_examples"] / metrics["seconds"]
        achieved = flops_per_image * images_per_s
        row.update(
            images_per_s=images_per_s,
            steps=int(metrics["steps"]),
            warmup_s=warmup_s,
            peak_memory_gib=peak_memory_gib(device),
            tflops_achieved=achieved / 1e12,
            mfu=None if peak is None else achieved / (peak * 1e12),
            gflops_per_image_step=flops_per_image / 1e9,
        )
        rows.append(row)
        print(f"  {phase} {variant} batch {batch}: {images_per_s:.1f} images/s "
              f"(warm-up {warmup_s:.1f} s)", flush=True)  # fmt: skip
        del models
    return rows


def generation_rows(plan: Plan, device: torch.device, clock: Clock) -> list[dict[str, Any]]:
    """Generated images/s, DDIM with the preset's guidance: one image per call against
    batched calls, fp32 and bf16 autocast."""
    ae, denoiser, scheduler = build_models(plan, device)
    pipe = G2IPipeline.from_parts(ae, denoiser, scheduler, sample_steps=plan.gen_steps)
    g = torch.Generator().manual_seed(0)
    genotypes = torch.randint(0, 3, (plan.gen_images, N_SNPS), generator=g)
    labels = torch.randint(0, 3, (plan.gen_images,), generator=g)
    kw = {"sampler": "ddim", "num_inference_steps": plan.gen_steps}
    kw["guidance_scale"] = plan.model.guidance_scale
    # One image per call: a few images are enough to time it.
    cells = [("bf16", 1, max(2, plan.gen_batches[0] // 4))]
    cells += [("bf16", b, plan.gen_images) for b in plan.gen_batches]
    cells += [("fp32", plan.gen_batches[-1], plan.gen_images)]
    rows = []
    for precision, batch, n in cells:
        row: dict[str, Any] = {"precision": precision, "batch_size": batch, "images": n}
        if device.type == "cuda" and clock.left() < 60:
            rows.append({**row, "skipped": f"time box ({clock.left():.0f} s left)"})
            continue
        mode = "bf16" if precision == "bf16" else "no"
        with autocast(device, mode):
            warm = {**kw, "num_inference_steps": 2}
            generate(pipe, genotypes[:batch], labels[:batch], batch_size=batch, **warm)
            reset_memory(device)
            sync(device)
            start = time.perf_counter()
            generate(pipe, genotypes[:n], labels[:n], seed=1, batch_size=batch, **kw)
            sync(device)
        seconds = time.perf_counter() - start
        row.update(
            images_per_s=n / seconds, seconds=seconds, peak_memory_gib=peak_memory_gib(device)
        )
        rows.append(row)
    return rows


def fedavg(results: list[tuple[dict[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
    """Weighted mean of the sites' weights by their example counts (Flower's FedAvg)."""
    total = sum(n for _, n in results)
    return {
        k: sum(w[k].float() * (n / total) for w, n in results).to(results[0][0][k].dtype)
        for k in results[0][0]
    }


def federated_round(
    plan: Plan, device: torch.device, clock: Clock, best: dict[str, Any]
) -> dict[str, Any]:
    """One round per phase of three simulated sites sharing the device, sequentially."""
    if device.type == "cuda" and clock.left() < 60:
        return {"skipped": f"time box ({clock.left():.0f} s left)"}
    sites = [InMemory(plan.site_images, plan.image_size, seed=10 + k) for k in range(3)]
    ae, denoiser, scheduler = models = build_models(plan, device)
    batch = plan.ldm_batches[0]
    cfg = TrainConfig(batch_size=batch, ae_epochs=10_000, ldm_epochs=10_000)
    # Without compile: a deployed site runs each round in a fresh process, which would
    # compile again; the round's time would be mostly compilation.
    settings = {k: v for k, v in best.items() if k != "compile"}
    cfg = replace(cfg, max_steps_ae=plan.site_steps, max_steps_ldm=plan.site_steps, **settings)
    out: dict[str, Any] = {"sites": 3, "batch_size": batch, "local_steps": plan.site_steps}
    out["settings"] = settings
    reset_memory(device)
    start = time.perf_counter()
    for phase, model in (("ae", ae), ("ldm", denoiser)):
        phase_start = time.perf_counter()
        global_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        results, site_s = [], []
        for k, data in enumerate(sites):
            load_weights(model, global_weights)
            t0 = time.perf_counter()
            seed = derive_seed(0, f"site-{k}", phase, 1)
            res = run_phase(phase, plan, models, data, cfg, device, seed)
            sync(device)
            site_s.append(time.perf_counter() - t0)
            results.append((_weights_of(model), res["num_examples"]))
        load_weights(model, fedavg(results))
        out[f"{phase}_site_seconds"] = site_s
        out[f"{phase}_round_seconds"] = time.perf_counter() - phase_start
    out["round_seconds"] = time.perf_counter() - start
    out["peak_memory_gib"] = peak_memory_gib(device)
    return out


def _weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def best_settings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The LDM variant with the highest images/s (the federated round uses it)."""
    done = [r for r in rows if r["phase"] == "ldm" and "images_per_s" in r]
    if not done:
        return dict(VARIANTS["bf16"])
    return dict(VARIANTS[max(done, key=lambda r: r["images_per_s"])["variant"]])


def timed_part(name: str, fn: Callable[[], Any], result: dict[str, Any]) -> None:
    """Run one part; a failure is recorded, not fatal, so the other parts still report."""
    start = time.perf_counter()
    try:
        result[name] = fn()
    except Exception as err:  # noqa: BLE001 - the JSON names it
        result[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        print(f"{name}: FAILED {type(err).__name__}: {err}", file=sys.stderr)
    seconds = result.setdefault("part_seconds", {})[name] = time.perf_counter() - start
    print(f"{name}: {seconds:.1f} s", flush=True)


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(result: dict[str, Any]) -> None:
    print(f"device: {result['device']}; peak bf16 used for MFU: {result['peak_used']}")
    print("| phase | variant | batch | images/s | peak GiB | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    rows = result.get("training", [])
    for r in rows if isinstance(rows, list) else []:
        if "skipped" in r:
            print(f"| {r['phase']} | {r['variant']} | {r['batch_size']} | {r['skipped']} |||")
            continue
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        print(
            f"| {r['phase']} | {r['variant']} | {r['batch_size']} | {fmt(r['images_per_s'])} "
            f"| {fmt(r['peak_memory_gib'])} | {fmt(r['tflops_achieved'])} | {fmt(mfu)}% |"
        )
    print("| generation (DDIM) | precision | batch | images/s | peak GiB |")
    print("|---|---|---|---|---|")
    gen = result.get("generation", [])
    for r in gen if isinstance(gen, list) else []:
        speed = r.get("skipped") or fmt(r["images_per_s"], ".2f")
        print(f"| {r['images']} images | {r['precision']} | {r['batch_size']} | {speed} "
              f"| {fmt(r.get('peak_memory_gib'))} |")  # fmt: skip
    fed = result.get("federated_round", {})
    if "round_seconds" in fed:
        print(
            f"federated round, 3 sites sharing the device: {fed['round_seconds']:.1f} s "
            f"(AE {fed['ae_round_seconds']:.1f} s, LDM {fed['ldm_round_seconds']:.1f} s, "
            f"{fed['local_steps']} local steps per site and phase at batch {fed['batch_size']})"
        )
    else:
        print(f"federated round: {fed}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, any device")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget-s", type=float, default=540.0, help="whole run's time box")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = get_device(args.device)
    if device.type != "cuda" and not args.smoke:
        print(
            "gpu_paper_scale: no CUDA device here. This benchmark measures the paper preset "
            "on a GPU; run it on a CUDA machine, or pass --smoke to check every code path "
            "on tiny shapes (numbers meaningless).",
            file=sys.stderr,
        )
        return 2
    plan = make_plan(args.smoke)
    clock = Clock(args.budget_s)
    name = device_name(device)
    peak, key = peak_tflops(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.smoke:
        torch.set_num_threads(1)  # tiny networks: more threads only contend
    result: dict[str, Any] = {
        "device": name,
        "smoke": args.smoke,
        "peak_bf16_tflops": peak,
        "peak_used": f"{key} {peak:.0f} TFLOP/s dense bf16" if peak else "unknown device: none",
        "plan": {k: v for k, v in asdict(plan).items() if k != "model"},
        "versions": library_versions(),
        # fp32 rows: matmuls in full fp32 unless TF32 is allowed; convolutions follow cuDNN's.
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
    }

    def training() -> list[dict[str, Any]]:
        return training_rows("ae", plan, device, clock, peak) + training_rows(
            "ldm", plan, device, clock, peak
        )

    timed_part("training", training, result)
    timed_part("generation", lambda: generation_rows(plan, device, clock), result)
    rows = result["training"] if isinstance(result["training"], list) else []
    best = best_settings(rows)
    timed_part("federated_round", lambda: federated_round(plan, device, clock, best), result)
    result["total_seconds"] = time.perf_counter() - clock.start
    print_report(result)
    out = args.out or OUT / ("gpu_paper_scale_smoke.json" if args.smoke else "gpu_paper_scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out} ({result['total_seconds']:.0f} s)")
    failed = [k for k in ("training", "generation", "federated_round") if "error" in result[k]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
