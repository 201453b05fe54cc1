"""Time the cohort generator on the default federation (3 sites, ~60 subjects, 2 mm).

Usage: python benchmarks/cohort_generation.py [--workers 2] [--out benchmarks/results]
Prints a table and writes cohort_generation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from conf import load_config, to_object
from simulations.cohort import simulate_cohort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    cfg = replace(to_object(load_config(config_name="simulate").cohort), workers=args.workers)
    n_subjects = sum(
        cfg.subjects_per_site[k % len(cfg.subjects_per_site)] for k in range(cfg.n_sites)
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, c in (
            ("genotypes + clinical only", replace(cfg, write_mri=False)),
            ("full cohort (PLINK + NIfTI)", cfg),
        ):
            t0 = time.perf_counter()
            simulate_cohort(c, Path(tmp) / label.split()[0], seed=0)
            rows.append({"what": label, "seconds": round(time.perf_counter() - t0, 2)})
        size = sum(p.stat().st_size for p in (Path(tmp) / "full").rglob("*") if p.is_file())
    result = {
        "n_sites": cfg.n_sites,
        "n_subjects": n_subjects,
        "voxel_size_mm": cfg.voxel_size_mm,
        "n_background_snps": cfg.n_background_snps,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "rows": rows,
        "subjects_per_second": round(n_subjects / rows[1]["seconds"], 2),
        "cohort_megabytes": round(size / 2**20, 1),
    }
    print(f"{'step':<32}{'seconds':>10}")
    for r in rows:
        print(f"{r['what']:<32}{r['seconds']:>10.2f}")
    print(
        f"{n_subjects} subjects, {result['subjects_per_second']} subjects/s, "
        f"{result['cohort_megabytes']} MB on disk"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cohort_generation.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
