"""Genotype QC speed: g2i-qc vs plink1.9 on the same fileset (default: ADNI-1 scale,
900 samples x 620,000 SNPs), same flags (--mind 0.05 --geno 0.05 --hwe 1e-5 --maf 0.01
--make-bed), outputs checked byte for byte.

    .venv/bin/python benchmarks/qc_vs_plink.py [--n-samples 900] [--n-snps 620000]

Runs are interleaved (plink, our API, our CLI, our API on one thread) after one warm-up
each so that all read the .bed from the page cache. The API time is ``run_qc`` called in
this process (read, QC, all outputs written); the CLI time adds Python start-up and imports.
Reports median wall time, the ratio to plink1.9, and peak memory
(max RSS of the CLI process, and the growth of this process's RSS during the API call).
Prints a table and writes benchmarks/results/qc_vs_plink.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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


def timed_subprocess(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and max RSS (KiB) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=900)
    ap.add_argument("--n-snps", type=int, default=620_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "qc_vs_plink.json"
    )
    args = ap.parse_args()
    plink = shutil.which("plink1.9")
    if plink is None:
        sys.exit("plink1.9 is not installed: nothing to compare with")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "array"
    expected_size = 3 + args.n_snps * ((args.n_samples + 3) // 4)
    bed = data.with_suffix(".bed")
    if not (args.workdir and bed.exists() and bed.stat().st_size == expected_size):
        t0 = time.perf_counter()
        make_fileset(data, args.n_samples, args.n_snps)
        print(
            f"fileset {args.n_samples} x {args.n_snps} written in {time.perf_counter() - t0:.1f} s"
        )

    cfg = qc_config(mind=0.05, geno=0.05, hwe=1e-5, maf=0.01)
    plink_cmd = [plink, "--bfile", str(data), *FLAGS, "--make-bed", "--out", str(work / "plink")]
    cli_cmd = [str(Path(sys.executable).parent / "g2i-qc"), "--bfile", str(data), *FLAGS]
    cli_cmd += ["--out", str(work / "cli")]
    timed_subprocess(plink_cmd)  # warm-up: page cache, first runs
    run_qc(data, cfg, work / "api")
    times: dict[str, list[float]] = {
        "plink1.9": [],
        "g2i-qc API": [],
        "g2i-qc API 1 thread": [],
        "g2i-qc CLI": [],
    }
    rss = {"plink1.9": 0, "g2i-qc CLI": 0, "g2i-qc API (RSS growth)": 0}
    for _ in range(args.repeats):
        wall, _ = timed_subprocess(plink_cmd)
        times["plink1.9"].append(wall)
        before = rss_kib()
        t = time.perf_counter()
        result = run_qc(data, cfg, work / "api")
        times["g2i-qc API"].append(time.perf_counter() - t)
        rss["g2i-qc API (RSS growth)"] = max(rss["g2i-qc API (RSS growth)"], rss_kib() - before)
        wall, _ = timed_subprocess(cli_cmd)
        times["g2i-qc CLI"].append(wall)
        os.environ["G2I_THREADS"] = "1"
        t = time.perf_counter()
        run_qc(data, cfg, work / "api1")
        times["g2i-qc API 1 thread"].append(time.perf_counter() - t)
        del os.environ["G2I_THREADS"]
    # ru_maxrss of children is the max over all of them: measure each tool alone
    rss["plink1.9"] = _peak_rss(plink_cmd)
    rss["g2i-qc CLI"] = _peak_rss(cli_cmd)
    identical = all(
        (work / f"plink{ext}").read_bytes() == (work / f"{who}{ext}").read_bytes()
        for ext in (".bed", ".bim", ".fam")
        for who in ("api", "api1", "cli")
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    rep = result.report()
    table = {
        "n_samples": args.n_samples,
        "n_snps": args.n_snps,
        "median_seconds": med,
        "all_seconds": times,
        "ratio_api_vs_plink": med["g2i-qc API"] / med["plink1.9"],
        "ratio_cli_vs_plink": med["g2i-qc CLI"] / med["plink1.9"],
        "ratio_api_1_thread_vs_plink": med["g2i-qc API 1 thread"] / med["plink1.9"],
        "peak_rss_mib": {k: round(v / 1024, 1) for k, v in rss.items()},
        "outputs_byte_identical": identical,
        "removed": {"mind": rep["samples"]["removed_mind"], **rep["variants"]["removed"]},
        "compiled_kernels": HAVE_EXTENSION,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {_cpus()} CPUs",
    }
    print("\n| tool | median wall (s) | ratio vs plink1.9 | peak RSS (MiB) |")
    print("|---|---|---|---|")
    print(f"| plink1.9 | {med['plink1.9']:.3f} | 1.00 | {rss['plink1.9'] / 1024:.0f} |")
    print(
        f"| g2i-qc API (run_qc) | {med['g2i-qc API']:.3f} | {table['ratio_api_vs_plink']:.2f} "
        f"| +{rss['g2i-qc API (RSS growth)'] / 1024:.0f} (growth) |"
    )
    one = med["g2i-qc API 1 thread"]
    print(f"| g2i-qc API, 1 thread | {one:.3f} | {table['ratio_api_1_thread_vs_plink']:.2f} | |")
    print(
        f"| g2i-qc CLI | {med['g2i-qc CLI']:.3f} | {table['ratio_cli_vs_plink']:.2f} "
        f"| {rss['g2i-qc CLI'] / 1024:.0f} |"
    )
    print(f"\noutputs byte-identical to plink1.9: {identical}; removed: {table['removed']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.workdir is None:
        shutil.rmtree(work)


def _peak_rss(cmd: list[str]) -> int:
    """Max RSS (KiB) of one run of ``cmd``, measured in a fresh child."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
