"""Slices prepared per second by ``g2i-prepare`` on the default cohort (one process).

Usage: python benchmarks/prepare_speed.py [--cohort data/cohort] [--image-size 64]
Generates the default cohort first when it is absent. Prints a table and writes
benchmarks/results/prepare_speed.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from conf import load_config, to_object
from preprocessing.dataset import prepare_site
from preprocessing.site import site_genotype_panel
from simulations.cohort import simulate_cohort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cohort", default="data/cohort")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    cohort = Path(args.cohort)
    if not (cohort / "cohort.json").exists():
        simulate_cohort(to_object(load_config(config_name="simulate").cohort), cohort, seed=0)
    data = replace(to_object(load_config("tiny").data), image_size=args.image_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for site in sorted(cohort.glob("site-*")):
            out = Path(tmp) / site.name
            source = partial(site_genotype_panel, work_dir=out, qc=data.qc)
            t0 = time.perf_counter()
            m = prepare_site(site, out, data, source, progress=False)
            dt = time.perf_counter() - t0
            n = len(m["subjects"]) * data.n_slices
            rows.append(
                {
                    "site": site.name,
                    "slices": n,
                    "seconds": round(dt, 2),
                    "slices_per_second": round(n / dt, 2),
                }
            )
    total = sum(r["slices"] for r in rows) / sum(r["seconds"] for r in rows)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'site':<10}{'slices':>8}{'seconds':>10}{'slices/s':>10}")
    for r in rows:
        print(
            f"{r['site']:<10}{r['slices']:>8}{r['seconds']:>10.2f}{r['slices_per_second']:>10.2f}"
        )
    print(
        f"overall {total:.2f} slices/s at {args.image_size}x{args.image_size}; "
        f"peak RSS {peak_mb:.0f} MB"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "image_size": args.image_size,
        "rows": rows,
        "slices_per_second": round(total, 2),
        "peak_rss_mb": round(peak_mb, 1),
    }
    (out / "prepare_speed.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
