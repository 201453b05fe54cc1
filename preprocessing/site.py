"""A site's genotype step: QC (local, or with the federation's keep-list), then the AD panel.

Used by ``g2i-prepare`` and by the ClientApp; returns the panel table that
``preprocessing.dataset.prepare_site`` joins with the images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from conf.schema import QCConfig
from preprocessing.federated_qc import FederatedQCResult, apply_keep_list
from preprocessing.panel import build_panel
from preprocessing.qc import run_qc


def site_genotype_panel(
    site_dir: str | Path,
    work_dir: str | Path,
    qc: QCConfig,
    catalog: str | Path | None = None,
    decision: FederatedQCResult | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """QC the site's ``genotypes`` fileset into ``work_dir/genotypes_qc`` and build the panel.

    Without ``decision`` the QC is local (``--mind``, ``--geno``, ``--hwe``, ``--maf`` on this
    site alone); with the federation's ``decision`` the site applies its local ``--mind`` and
    the pooled SNP keep-list.

    Returns:
        (table, report): table indexed by subject ID, one column per aligned panel SNP plus
        ``APOE_e4``, values 0/1/2 risk-allele copies and -1 missing; report with the QC
        summary and what happened to each catalog SNP.
    """
    site = Path(site_dir)
    out = Path(work_dir) / "genotypes_qc"
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = site / "genotypes"
    if decision is None:
        result = run_qc(prefix, qc, out)
    else:
        result = apply_keep_list(prefix, decision, qc, out)
    table, panel = build_panel(out, catalog, site / "clinical.csv")
    full = result.report()  # the whole report (with IDs) stays in genotypes_qc.qc.json
    report = {
        "qc": {
            "samples_removed_mind": full["samples"]["removed_mind"],
            "samples_kept": full["samples"]["kept"],
            "variants_removed": full["variants"]["removed"],
            "variants_kept": full["variants"]["kept"],
        },
        "qc_mode": "local" if decision is None else "federated keep-list",
        "panel": panel.to_dict(),
    }
    return table, report
