"""Aggregate counts a site may share: how many subjects, scans and genotypes it holds.

Read with the same reader and diagnosis vocabulary as ``g2i-prepare``
(``preprocessing.site_inputs``), so the census counts what preparation will use.
"""

from __future__ import annotations

from pathlib import Path

from conf.schema import DataConfig
from preprocessing.site_inputs import (
    LABELS,
    check_join,
    genotyped_ids,
    read_clinical,
    scan_files,
)


def site_census(site_dir: str | Path, cfg: DataConfig | None = None) -> dict[str, int]:
    """Counts of subjects per diagnosis, T1 scans and genotyped samples at one site.

    Only totals leave the site; no subject identifier or value is returned. A subject is
    counted once however many rows it has; ``n-<DX>`` counts subjects whose diagnosis maps
    (``cfg.dx_column``, ``cfg.dx_map``) to that class without conflict.

    Raises:
        FileNotFoundError: naming the missing file when the site folder is incomplete.
        ClinicalTableError, GenotypeFormatError: an unreadable table or IDs that do not join.
    """
    site = Path(site_dir)
    clinical = site / "clinical.csv"
    fam = site / "genotypes.fam"
    for path in (clinical, fam):
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: missing; a site folder needs clinical.csv, "
                "genotypes.bed/.bim/.fam and mri/"
            )
    table = read_clinical(clinical, cfg)
    ids = set(table.subjects.index)
    scans = {sid for sid, p in scan_files(site / "mri").items() if p.is_file()}
    genotyped = set(genotyped_ids(fam))
    check_join(table, genotyped, scans)
    labels = table.subjects["label"]
    counts = {f"n-{dx}": int((labels == k).sum()) for k, dx in enumerate(LABELS)}
    counts.update(
        {
            "n-subjects": len(ids),
            "n-scans": len(scans & ids),
            "n-genotyped": len(genotyped & ids),
            "n-complete": len(ids & scans & genotyped),
        }
    )
    return counts
