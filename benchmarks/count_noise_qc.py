"""What calibrated noise on the released QC counts costs: epsilon per release against how far
the federated QC keep-list moves from the exact (pooled plink1.9) one.

For each noise multiplier z, every site of a cohort releases its QC counts as the ClientApp
does under ``count_noise_multiplier: z`` (``released_site_counts``: Gaussian noise of std
z x the release's L2 sensitivity, then the small-cell rule on the noisy sizes); the server
runs ``federated_variant_qc`` on them. Reported per z: the RDP epsilon of one release and
of a run's three count releases (census, QC counts, prepare) at delta 1e-5, the SNPs whose
keep / remove decision differs from the exact counts' (mean over draws), and the Jaccard
index of the two keep-lists. Prints a table and writes benchmarks/results/count_noise_qc.json.

    python benchmarks/count_noise_qc.py --cohort DIR [--draws 5] [--multipliers 0.01 0.1 1 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf.schema import QCConfig  # noqa: E402
from g2i_models.privacy import PrivacyLedger  # noqa: E402
from preprocessing.federated_qc import (  # noqa: E402
    counts_sensitivity,
    federated_variant_qc,
    released_site_counts,
    site_counts,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True, help="folder of site-*/genotypes.*")
    ap.add_argument("--draws", type=int, default=5, help="noise draws per multiplier")
    ap.add_argument(
        "--multipliers", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 4.0]
    )
    ap.add_argument("--min-cell", type=int, default=10)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/count_noise_qc.json")
    args = ap.parse_args(argv)

    qc = QCConfig()
    sites = sorted(p.parent / "genotypes" for p in args.cohort.glob("site-*/genotypes.bed"))
    if not sites:
        ap.error(f"{args.cohort}: no site-*/genotypes.bed")
    exact = federated_variant_qc(
        [released_site_counts(s, qc, args.min_cell)[0] for s in sites], qc
    ).keep
    sensitivity = [counts_sensitivity(site_counts(s, qc)) for s in sites]
    rows = []
    for z in args.multipliers:
        rng = np.random.default_rng(0)
        changed, jaccard = [], []
        for _ in range(args.draws):
            released = [released_site_counts(s, qc, args.min_cell, z, rng)[0] for s in sites]
            keep = federated_variant_qc(released, qc).keep
            changed.append(int((keep != exact).sum()))
            jaccard.append(float((keep & exact).sum() / max((keep | exact).sum(), 1)))
        one = PrivacyLedger(releases=[(z, "qc_counts")]).epsilon(args.delta)
        run = PrivacyLedger(releases=[(z, k) for k in ("census", "qc", "prepare")]).epsilon(
            args.delta
        )
        rows.append(
            {
                "multiplier": z,
                "noise_std": [round(z * s, 2) for s in sensitivity],
                "epsilon_one_release": one,
                "epsilon_three_releases": run,
                "snps_changed": float(np.mean(changed)),
                "jaccard": float(np.mean(jaccard)),
            }
        )
    n_samples = [site_counts(s, qc).n_samples for s in sites]
    print(
        f"{len(sites)} sites, {n_samples} samples, {exact.size} SNPs, exact keep-list "
        f"{int(exact.sum())}; L2 sensitivity per site {[round(s, 1) for s in sensitivity]}"
    )
    print("\n| z | noise std per site | epsilon, 1 release | epsilon, 3 releases | "
          "SNPs changed | Jaccard |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['multiplier']:g} | {r['noise_std']} | {r['epsilon_one_release']:.1f} | "
            f"{r['epsilon_three_releases']:.1f} | {r['snps_changed']:.1f} | {r['jaccard']:.3f} |"
        )
    summary = {
        "cohort": str(args.cohort),
        "sites": len(sites),
        "samples": n_samples,
        "snps": int(exact.size),
        "exact_kept": int(exact.sum()),
        "sensitivity": sensitivity,
        "delta": args.delta,
        "draws": args.draws,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
