"""Federated vs centralized wall time for the same number of optimiser steps (tiny config).

1. Runs the federation as ``run.sh`` does: ``flwr run . --stream`` (Simulation Engine, 3
   SuperNodes, one CPU each) with a private FLWR_HOME and work folder, few rounds and epochs.
2. Counts the optimiser steps it took from the run folder's ``rounds.jsonl`` (every site's
   local steps, summed over sites and rounds, per phase).
3. Trains the centralized baseline (``train_centralized``, what ``g2i-train`` calls) on the
   pooled sites the federation prepared, with ``train.max_steps_ae`` / ``max_steps_ldm`` set
   to those totals.

Reports both wall times, their ratio and where the federated time went (from the ServerApp's
log timestamps, 1 s resolution). The federated time includes starting the SuperLink and Ray,
the census, federated QC and building the site datasets; the centralized time starts from
the prepared datasets. ``flwr run`` submits to the local SuperLink on its fixed port: when
another ``flwr run`` on the machine already started one, this run goes there and shares the
CPUs with it. Writes ``benchmarks/results/fed_vs_central.json``.

    python benchmarks/fed_vs_central.py
    python benchmarks/fed_vs_central.py --rounds-ae 1 --rounds-ldm 1 --ldm-epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

import g2i_models.baseline as baseline
from conf.loader import load_config, to_object
from g2i_models.datasets import load_datasets
from g2i_models.pipeline import library_versions
from studies.federation import (  # noqa: E402
    BIN,
    REPO,
    private_superlink_env,
    stop_local_superlink,
)

STAMP = re.compile(r"^(\d\d/\d\d/\d{4} \d\d:\d\d:\d\d):(?:INFO|DEBUG|WARNING):(.*)$")


def run_federation(
    tmp: Path, cohort: Path, overrides: str, sites: int, timeout: int
) -> tuple[float, list[tuple[datetime, str]], datetime, Path]:
    """``flwr run`` as run.sh does; (wall seconds, timestamped log events, start, run dir)."""
    home, run_dir, work = tmp / "flwr_home", tmp / "fed_run", tmp / "work"
    home.mkdir()
    run_config = (
        f"experiment='fed_tiny' overrides='data.root={cohort} run_dir={run_dir} "
        f"data.cache_dir={work} federation.min_sites={sites} {overrides}'"
    )
    cmd = [
        str(BIN / "flwr"), "run", ".", "--stream",
        "--run-config", run_config,
        "--federation-config", f"num-supernodes={sites} client-resources-num-cpus=1",
    ]  # fmt: skip
    env = private_superlink_env(home)
    events: list[tuple[datetime, str]] = []
    log = (tmp / "flwr_run.log").open("w")
    start_wall, start = datetime.now(), time.perf_counter()
    try:
        with subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                m = STAMP.match(line.strip())
                if m:
                    events.append((datetime.strptime(m[1], "%m/%d/%Y %H:%M:%S"), m[2].strip()))
                if time.perf_counter() - start > timeout:
                    proc.kill()
                    raise TimeoutError(f"flwr run took more than {timeout} s; see {log.name}")
        wall = time.perf_counter() - start
    finally:
        log.close()
        stop_local_superlink(home)
    # `flwr run` exits 0 even when the run failed: check what the run left behind.
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        tail = "".join(Path(log.name).read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"federated run failed: no {metrics_path}; its log ends:\n{tail}")
    metrics = json.loads(metrics_path.read_text())
    if metrics["failures"] or len(metrics["sites"]) < sites:
        raise RuntimeError(f"federated run had failing sites: {metrics['failures']}")
    return wall, events, start_wall, run_dir


def federated_steps(run_dir: Path) -> dict[str, int]:
    """Optimiser steps per phase, summed over every site and round of ``rounds.jsonl``."""
    steps = {"ae": 0, "ldm": 0}
    for line in (run_dir / "rounds.jsonl").read_text().splitlines():
        r = json.loads(line)
        steps[r["phase"]] += int(sum(m["steps"] for m in r["site_metrics"].values()))
    return steps


def breakdown(events: list[tuple[datetime, str]], start: datetime, wall: float) -> dict:
    """Seconds spent in each part of the federated run, from the ServerApp's log."""

    def times(prefix: str) -> list[datetime]:
        return [t for t, text in events if text.startswith(prefix)]

    def span(a: str, b: str) -> float:
        return sum((y - x).total_seconds() for x, y in zip(times(a), times(b), strict=True))

    strategy_starts = times("Starting GuardedStrategy")
    finished = times("Strategy execution finished")
    server_done = times("ServerApp finished running")
    if len(strategy_starts) != 2 or len(finished) != 2 or not server_done:
        return {}
    parts = {
        "start, census, federated QC, site datasets": (strategy_starts[0] - start).total_seconds(),
        "AE rounds": (finished[0] - strategy_starts[0]).total_seconds(),
        "latent stats": (strategy_starts[1] - finished[0]).total_seconds(),
        "LDM rounds": (finished[1] - strategy_starts[1]).total_seconds(),
        "after training (generation, synthetic set, site evaluations, report)": (
            server_done[0] - finished[1]
        ).total_seconds(),
    }
    parts["shutdown"] = wall - (server_done[0] - start).total_seconds()
    rounds = {
        "train messages (local training, sites in parallel)": span(
            "configure_train", "aggregate_train"
        ),
        "evaluate messages": span("configure_evaluate", "aggregate_evaluate"),
    }
    return {"parts_s": parts, "rounds_s": rounds}


def run_centralized(
    tmp: Path, steps: dict[str, int], batch_size: int
) -> tuple[float, dict[str, float], dict[str, float]]:
    """``train_centralized`` on the federation's prepared sites, pooled, for ``steps``."""
    pooled = tmp / "pooled"
    pooled.mkdir()
    for site in sorted((tmp / "work").glob("site-*")):
        (pooled / site.name).symlink_to(site / "prepared", target_is_directory=True)
    train_set, _ = load_datasets(to_object(load_config("tiny", f"data.root={pooled}").data))
    per_epoch = len(train_set) // batch_size
    cfg = load_config(
        "tiny",
        [
            f"data.root={pooled}",
            f"run_dir={tmp / 'central_run'}",
            f"train.batch_size={batch_size}",
            f"train.max_steps_ae={steps['ae']}",
            f"train.max_steps_ldm={steps['ldm']}",
            f"train.ae_epochs={math.ceil(steps['ae'] / per_epoch)}",
            f"train.ldm_epochs={math.ceil(steps['ldm'] / per_epoch)}",
        ],
    )
    timed = {"autoencoder training": 0.0, "LDM training": 0.0}

    def timer(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timed[name] += time.perf_counter() - t0

        return wrapped

    # Time the two training calls inside the baseline without changing what it does.
    train_ae, train_ldm = baseline.train_autoencoder, baseline.train_ldm
    baseline.train_autoencoder = timer("autoencoder training", train_ae)
    baseline.train_ldm = timer("LDM training", train_ldm)
    try:
        start = time.perf_counter()
        train_set, val_set = load_datasets(to_object(cfg.data), seed=cfg.seed)
        metrics = baseline.train_centralized(
            train_set,
            val_set,
            to_object(cfg.model),
            to_object(cfg.train),
            cfg.run_dir,
            cfg.seed,
            progress=False,
            privacy=to_object(cfg.privacy),
        )
        wall = time.perf_counter() - start
    finally:
        baseline.train_autoencoder, baseline.train_ldm = train_ae, train_ldm
    timed["rest (evaluation, scale, generation, plots)"] = wall - sum(timed.values())
    return wall, metrics, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=Path("data/cohort"))
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds-ae", type=int, default=2)
    parser.add_argument("--rounds-ldm", type=int, default=2)
    parser.add_argument("--ae-epochs", type=int, default=1, help="local epochs per AE round")
    parser.add_argument("--ldm-epochs", type=int, default=2, help="local epochs per LDM round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=int, default=900, help="seconds for flwr run")
    parser.add_argument(
        "--central-threads",
        type=int,
        default=0,
        help="torch threads of the centralized run (0: torch's default, one per core); each "
        "simulated site gets one CPU",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fed_vs_central.json"))
    args = parser.parse_args()
    cohort = args.cohort.resolve()
    overrides = (
        f"federation.rounds_ae={args.rounds_ae} federation.rounds_ldm={args.rounds_ldm} "
        f"train.ae_epochs={args.ae_epochs} train.ldm_epochs={args.ldm_epochs} "
        f"train.batch_size={args.batch_size}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="g2i-fed-vs-central-"))
    load_before = os.getloadavg()
    try:
        fed_wall, events, fed_start, run_dir = run_federation(
            tmp, cohort, overrides, args.sites, args.timeout
        )
        steps = federated_steps(run_dir)
        parts = breakdown(events, fed_start, fed_wall)
        load_between = os.getloadavg()
        if args.central_threads > 0:
            torch.set_num_threads(args.central_threads)
        central_wall, central_metrics, central_parts = run_centralized(tmp, steps, args.batch_size)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    central_steps = {
        "ae": int(central_metrics["ae_steps"]),
        "ldm": int(central_metrics["ldm_steps"]),
    }
    train_ratio = None
    if parts:
        fed_train = sum(parts["parts_s"][k] for k in ("AE rounds", "latent stats", "LDM rounds"))
        train_ratio = fed_train / (
            central_parts["autoencoder training"] + central_parts["LDM training"]
        )
    result = {
        "experiment": "fed_tiny / tiny (64x64)",
        "sites": args.sites,
        "federation_overrides": overrides,
        "steps": {"federated": steps, "centralized": central_steps},
        "federated_wall_s": fed_wall,
        "centralized_wall_s": central_wall,
        "ratio_federated_over_centralized": fed_wall / central_wall,
        # Training phases only: AE rounds + latent stats + LDM rounds (each round's transfers
        # and evaluation included) against the baseline's two training calls.
        "ratio_training_phases": train_ratio,
        "federated_breakdown": parts,
        "centralized_breakdown_s": central_parts,
        "load_average_before": load_before,
        "load_average_after_federation": load_between,
        "load_average_after": os.getloadavg(),
        "cpu_cores": os.cpu_count(),
        "centralized_torch_threads": torch.get_num_threads(),
        "versions": library_versions(),
    }
    print(
        f"optimiser steps (AE, LDM): federated {steps['ae']}, {steps['ldm']} "
        f"(sum over {args.sites} sites); centralized {central_steps['ae']}, "
        f"{central_steps['ldm']}"
    )
    print("| run | wall s |")
    print("|---|---|")
    print(f"| federated (`flwr run`, Simulation Engine) | {fed_wall:.1f} |")
    print(f"| centralized (`train_centralized`, pooled sites) | {central_wall:.1f} |")
    print(f"| federated / centralized | {fed_wall / central_wall:.2f}x |")
    if train_ratio is not None:
        print(f"| training phases only, federated / centralized | {train_ratio:.2f}x |")
    if parts:
        print("\n| federated part | s |\n|---|---|")
        for name, s in {**parts["parts_s"], **parts["rounds_s"]}.items():
            print(f"| {name} | {s:.0f} |")
    print("\n| centralized part | s |\n|---|---|")
    for name, s in central_parts.items():
        print(f"| {name} | {s:.1f} |")
    print(
        f"load average before / between / after: {load_before} / {load_between} / "
        f"{result['load_average_after']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
