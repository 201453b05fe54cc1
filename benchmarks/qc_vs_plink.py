"""Genotype QC speed: g2i-qc vs plink1.9 and plink2 on the same fileset (default: ADNI-1
scale, 900 samples x 620,000 SNPs), same flags (--mind 0.05 --geno 0.05 --hwe 1e-5 --maf 0.01
--make-bed); g2i-qc's outputs checked byte for byte against plink1.9's.

    apt-get install plink1.9 plink2          # both references (Debian/Ubuntu packages)
    nice -n 5 .venv/bin/python benchmarks/qc_vs_plink.py [--n-samples 900] [--n-snps 620000]

Each repeat runs plink1.9, plink2, the g2i-qc CLI and ``run_qc`` in this process (the API),
interleaved, after one warm-up each so that all read the .bed from the page cache; the QC
package's bytecode is compiled first, as an installed package has it. Every tool
writes its own output prefix, so each run replaces its previous outputs. Per tool: median
wall time, median CPU time (user + system, all threads: less sensitive than wall time to
other processes on a shared machine) and peak RSS (max RSS of the child process, from
wait4); ratios to plink1.9 and to plink2 from the same run. The load average before and after
goes into the JSON. Prints a table and writes benchmarks/results/qc_vs_plink.json.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preprocessing.bed_kernels import HAVE_EXTENSION  # noqa: E402
from preprocessing.plink_io import BED_MAGIC, pack_bed_rows  # noqa: E402
from preprocessing.qc import qc_config, run_qc  # noqa: E402

FLAGS = ["--mind", "0.05", "--geno", "0.05", "--hwe", "1e-5", "--maf", "0.01"]


def make_fileset(prefix: Path, n_samples: int, n_snps: int, seed: int = 0) -> None:
    """An array-like fileset: MAF spectrum with rare SNPs, ~1% missing calls, a few bad SNPs
    and samples, HWE departures, chr1-22 + X, mixed sex, case/control phenotype."""
    rng = np.random.default_rng(seed)
    n_x = n_snps // 30
    chrom = np.concatenate(
        [np.repeat(np.arange(1, 23), (n_snps - n_x) // 22 + 1)[: n_snps - n_x], np.full(n_x, 23)]
    )
    pos = np.concatenate(
        [np.sort(rng.integers(1, 2**27, int((chrom == c).sum()))) for c in np.unique(chrom)]
    )
    sex = rng.choice([1, 2], n_samples)
    bad_sample = rng.random(n_samples) < 0.01
    with open(prefix.with_suffix(".bed"), "wb") as bed:
        bed.write(BED_MAGIC)
        for a in range(0, n_snps, 20_000):
            m = min(20_000, n_snps - a)
            maf = np.where(rng.random(m) < 0.15, rng.uniform(0, 0.01, m), rng.uniform(0.01, 0.5, m))
            g = rng.binomial(2, maf[:, None], (m, n_samples)).astype(np.int8)
            bad_hwe = rng.random(m) < 0.002
            g[bad_hwe] = rng.choice([0, 2], (int(bad_hwe.sum()), n_samples)).astype(np.int8)
            miss = rng.random((m, n_samples)) < np.where(rng.random(m) < 0.01, 0.1, 0.01)[:, None]
            miss |= bad_sample[None, :] & (rng.random((m, n_samples)) < 0.1)
            g[miss] = -1
            bed.write(pack_bed_rows(g).tobytes())
    alleles = np.array(list("ACGT"))
    a1 = rng.integers(0, 4, n_snps)
    a2 = (a1 + rng.integers(1, 4, n_snps)) % 4
    lines = [
        f"{c}\trs{j}\t0\t{p}\t{alleles[x]}\t{alleles[y]}\n"
        for j, (c, p, x, y) in enumerate(zip(chrom.tolist(), pos.tolist(), a1, a2, strict=True))
    ]
    prefix.with_suffix(".bim").write_text("".join(lines))
    pheno = rng.choice([1, 2], n_samples)
    prefix.with_suffix(".fam").write_text(
        "".join(f"F{i} I{i} 0 0 {sex[i]} {pheno[i]}\n" for i in range(n_samples))
    )


@dataclass
class Run:
    """One child process: wall seconds, CPU seconds (user + system), max RSS (MiB)."""

    wall: float
    cpu: float
    rss_mib: float


def timed_subprocess(cmd: list[str]) -> Run:
    """Run ``cmd``: wall time, and CPU time from wait4 (the child's own usage). Its RSS is
    measured apart (``peak_rss_mib``): a child forked from this process starts with its
    memory counted."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{err}")
    return Run(wall, usage.ru_utime + usage.ru_stime, 0.0)


def peak_rss_mib(cmd: list[str]) -> float:
    """Max RSS of one run of ``cmd``, launched from a fresh small interpreter."""
    probe = (
        "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(os.wait4(p.pid, 0)[2].ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-S", "-c", probe, *cmd], capture_output=True, text=True)
    return int(out.stdout.strip() or 0) / 1024


def timed_api(data: Path, out: Path) -> Run:
    """``run_qc`` in this process (CPU time of the whole process, RSS growth)."""
    before, cpu0 = rss_kib(), time.process_time()
    t0 = time.perf_counter()
    run_qc(data, qc_config(mind=0.05, geno=0.05, hwe=1e-5, maf=0.01), out)
    wall = time.perf_counter() - t0
    return Run(wall, time.process_time() - cpu0, (peak_rss_kib() - before) / 1024)


def rss_kib() -> int:
    return _status_kib("VmRSS:")


def peak_rss_kib() -> int:
    return _status_kib("VmHWM:")


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=900)
    ap.add_argument("--n-snps", type=int, default=620_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the fileset here")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "qc_vs_plink.json"
    )
    args = ap.parse_args()
    tools = {name: shutil.which(name) for name in ("plink1.9", "plink2")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        sys.exit(f"{', '.join(missing)} not installed: apt-get install plink1.9 plink2")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "array"
    expected_size = 3 + args.n_snps * ((args.n_samples + 3) // 4)
    bed = data.with_suffix(".bed")
    if not (bed.exists() and bed.stat().st_size == expected_size):
        t0 = time.perf_counter()
        make_fileset(data, args.n_samples, args.n_snps)
        print(
            f"fileset {args.n_samples} x {args.n_snps} written in {time.perf_counter() - t0:.1f} s"
        )
    # The CLI starts from the modules' bytecode, as an installed package does (pip compiles it
    # at install; a source checkout caches it at the first import unless
    # PYTHONDONTWRITEBYTECODE is set, and compiling costs the CLI about 15 ms a run).
    for package in ("preprocessing",):
        compileall.compile_dir(ROOT / package, quiet=1)
    load_before = os.getloadavg()
    base = [*FLAGS, "--make-bed"]
    commands = {
        "plink1.9": [tools["plink1.9"], "--bfile", str(data), *base, "--out", str(work / "p19")],
        "plink2": [tools["plink2"], "--bfile", str(data), *base, "--out", str(work / "p2")],
        "g2i-qc CLI": [
            str(Path(sys.executable).parent / "g2i-qc"),
            "--bfile",
            str(data),
            *base,
            "--out",
            str(work / "cli"),
        ],  # fmt: skip
    }
    runs: dict[str, list[Run]] = {name: [] for name in [*commands, "g2i-qc API (run_qc)"]}
    for cmd in commands.values():  # warm-up: page cache, first runs
        timed_subprocess(cmd)
    timed_api(data, work / "api")
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            runs[name].append(timed_subprocess(cmd))
        runs["g2i-qc API (run_qc)"].append(timed_api(data, work / "api"))
    rss = {name: peak_rss_mib(cmd) for name, cmd in commands.items()}
    load_after = os.getloadavg()
    identical = all(
        (work / f"p19{ext}").read_bytes() == (work / f"{who}{ext}").read_bytes()
        for ext in (".bed", ".bim", ".fam")
        for who in ("api", "cli")
    )
    med = {
        name: {
            "wall_s": statistics.median(r.wall for r in rs),
            "cpu_s": statistics.median(r.cpu for r in rs),
            "peak_rss_mib": rss.get(name, max(r.rss_mib for r in rs)),
        }
        for name, rs in runs.items()
    }
    ratios = {
        name: {
            f"{what}_vs_{ref}": m[f"{what}_s"] / med[ref][f"{what}_s"]
            for ref in ("plink1.9", "plink2")
            for what in ("wall", "cpu")
        }
        for name, m in med.items()
    }
    rep = json.loads((work / "cli.qc.json").read_text())
    table = {
        "n_samples": args.n_samples,
        "n_snps": args.n_snps,
        "flags": base,
        "repeats": args.repeats,
        "median": med,
        "ratios": ratios,
        "all_runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
        "outputs_byte_identical_to_plink1.9": identical,
        "removed": {"mind": rep["samples"]["removed_mind"], **rep["variants"]["removed"]},
        "compiled_kernels": HAVE_EXTENSION,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {_cpus()} CPUs",
        "versions": {name: _version(path) for name, path in tools.items()},
    }
    print(
        "\n| tool | median wall (s) | median CPU (s) | wall / plink1.9 | wall / plink2 "
        "| CPU / plink2 | peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, m in med.items():
        r = ratios[name]
        rss = f"+{m['peak_rss_mib']:.0f} (growth)" if "API" in name else f"{m['peak_rss_mib']:.0f}"
        print(
            f"| {name} | {m['wall_s']:.3f} | {m['cpu_s']:.3f} | {r['wall_vs_plink1.9']:.2f} "
            f"| {r['wall_vs_plink2']:.2f} | {r['cpu_vs_plink2']:.2f} | {rss} |"
        )
    print(
        f"\noutputs byte-identical to plink1.9: {identical}; removed: {table['removed']}; "
        f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.workdir is None:
        shutil.rmtree(work)


def _version(path: str | None) -> str:
    proc = subprocess.run([str(path), "--version"], capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "?"


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
