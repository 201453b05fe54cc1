"""Aggregate counts a site may share: how many subjects, scans and genotypes it holds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

DX_LABELS = ("CN", "MCI", "AD")


def site_census(site_dir: str | Path) -> dict[str, int]:
    """Counts of subjects per diagnosis, T1 scans and genotyped samples at one site.

    Only totals leave the site; no subject identifier or value is returned.

    Raises:
        FileNotFoundError: naming the missing file when the site folder is incomplete.
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
    table = pd.read_csv(clinical, dtype={"PTID": str})
    ids = set(table["PTID"])
    scans = {
        p.name.removesuffix(".nii.gz").removesuffix(".nii") for p in (site / "mri").glob("*.nii*")
    }
    with open(fam) as fh:
        genotyped = {line.split()[1] for line in fh if line.strip()}
    counts = {f"n-{dx}": int((table["DX"] == dx).sum()) for dx in DX_LABELS}
    counts.update(
        {
            "n-subjects": len(ids),
            "n-scans": len(scans & ids),
            "n-genotyped": len(genotyped & ids),
            "n-complete": len(ids & scans & genotyped),
        }
    )
    return counts
