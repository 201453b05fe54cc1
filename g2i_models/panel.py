"""The SNP panel a model was trained on, saved with it so genotypes from elsewhere can be
checked against it before generation.

Stored as the ``panel`` entry of ``model_index.json``: ``{"snp_names": [...], "alleles":
[...]}``, one entry per genotype column in the model's order. ``alleles[i]`` is what the
0/1/2 value of column i counts: the catalog's risk allele (plus strand) for a catalog SNP,
``"e4"`` for ``APOE_e4`` (copies of APOE e4), None where not known. The alleles come from
the shipped SNP catalog unless another is given; sites prepared by the ClientApp, and by
``g2i-prepare`` without ``catalog=``, use the shipped one.

A genotype CSV's header may name each column ``SNP`` or, as PLINK's ``--recode A`` does,
``SNP_ALLELE`` (e.g. ``rs429358_C``); :func:`header_problem` says what in it does not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from g2i_models.datasets import snp_names
from preprocessing.panel import APOE_COLUMN, CatalogSNP, load_catalog

APOE_ALLELE = "e4"

Panel = dict[str, list[Any]]


def panel_config(
    names: Sequence[str], catalog: str | Path | list[CatalogSNP] | None = None
) -> Panel:
    """The ``panel`` entry for genotype columns ``names`` (alleles from ``catalog``)."""
    snps = catalog if isinstance(catalog, list) else load_catalog(catalog)
    risk = {s.rsid: s.risk_allele for s in snps}
    names = [str(n) for n in names]
    alleles = [APOE_ALLELE if n == APOE_COLUMN else risk.get(n) for n in names]
    return {"snp_names": names, "alleles": alleles}


def _parts(dataset: Dataset) -> list[Dataset]:
    if isinstance(dataset, ConcatDataset):
        return [p for d in dataset.datasets for p in _parts(d)]
    return [dataset]


def dataset_panel(dataset: Dataset, catalog: str | Path | list[CatalogSNP] | None = None) -> Panel:
    """The panel of a dataset that names its SNP columns (``snp_names``).

    Raises:
        ValueError: the dataset does not name its columns, or a pooled dataset's parts have
            different panels (their genotype columns would not mean the same SNPs).
    """
    names = snp_names(dataset)
    for part in _parts(dataset)[1:]:
        other = snp_names(part)
        if other != names:
            diff = next(
                (a, b) for a, b in zip([*names, None], [*other, None], strict=False) if a != b
            )
            raise ValueError(
                f"the pooled datasets have different SNP panels ({len(names)} vs {len(other)} "
                f"SNPs; first difference {diff[0]} vs {diff[1]}); prepare every site with the "
                "same panel (the federation's keep-list, one catalog)"
            )
    return panel_config(names, catalog)


def check_panel(panel: Panel, n_snps: int | None) -> None:
    """Raise ValueError unless ``panel`` has one name and one allele per SNP, names unique."""
    names, alleles = panel.get("snp_names"), panel.get("alleles")
    if not isinstance(names, list) or not isinstance(alleles, list):
        raise ValueError(f"panel needs lists 'snp_names' and 'alleles', got {sorted(panel)}")
    if len(alleles) != len(names):
        raise ValueError(f"panel has {len(names)} SNP names but {len(alleles)} alleles")
    if n_snps is not None and len(names) != n_snps:
        raise ValueError(f"panel names {len(names)} SNPs, the SNP encoder takes {n_snps}")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"panel names SNP(s) {dups[:3]} more than once")


def _split(entry: str, names: Sequence[str]) -> tuple[str, str | None]:
    """A header entry as (SNP name, allele or None): ``NAME`` or ``NAME_ALLELE``."""
    if entry in names:
        return entry, None
    name, sep, allele = entry.rpartition("_")
    return (name, allele) if sep and name in names else (entry, None)


def header_problem(panel: Panel, header: Sequence[str]) -> str | None:
    """What in a genotype CSV header (column names) does not fit the model's panel, with
    the fix; None when every column is the panel's SNP at that place (and allele, where
    the header gives one and the model knows it)."""
    names, alleles = panel["snp_names"], panel["alleles"]
    where = "the model's panel order (snp_names in model_index.json's panel)"
    parsed = [_split(h.strip(), names) for h in header]
    for i, (name, allele) in enumerate(parsed):
        if i >= len(names):
            return (
                f"column {i + 1} is {header[i]!r} but the model has only {len(names)} SNPs; "
                f"drop the extra columns and keep {where}"
            )
        if name != names[i]:
            if name in names:
                return (
                    f"column {i + 1} is SNP {name} where the model has {names[i]} (it has "
                    f"{name} at column {names.index(name) + 1}); reorder the columns to {where}"
                )
            return (
                f"SNP {name} (column {i + 1}) is not in the model's panel, which has "
                f"{names[i]} there; give the model's SNPs in {where}"
            )
        if allele is not None and alleles[i] is not None and allele != alleles[i]:
            return (
                f"column {i + 1} counts {name} allele {allele} where the model counts "
                f"{alleles[i]} (alleles in model_index.json's panel); recode it to "
                f"{alleles[i]} copies (2 - value) or use PLINK's --recode-allele"
            )
    if len(parsed) < len(names):
        return (
            f"the header names {len(parsed)} SNPs, the model has {len(names)} (first "
            f"missing: {names[len(parsed)]}); give one column per SNP in {where}"
        )
    return None
