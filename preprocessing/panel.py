"""The AD SNP panel: catalog SNPs found in a (QC'd) fileset, aligned to the risk allele, and
the APOE e4 count.

- SNPs are matched by rsID (positions differ between genome builds).
- Each one is aligned to the catalog's risk allele: the risk allele may be the .bim A1 or A2
  ("swapped" when it is A2); when neither allele matches but their complements do, the SNP is
  on the other strand ("flipped"). A/T and C/G SNPs cannot be told apart from a strand flip
  and are dropped ("ambiguous"), as are SNPs whose alleles match neither way.
- Encoding: 0/1/2 = copies of the risk allele; a missing call is ``MISSING`` (-1), never 0.
- APOE e4 copies = copies of the rs429358 C allele when that SNP is genotyped; otherwise
  (APGEN1 == 4) + (APGEN2 == 4) from the site's clinical.csv; otherwise an error.

``build_panel`` returns the per-subject table (IID x panel SNPs + ``APOE_e4``) and a report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.bed_kernels import A1_COUNT_OF_CODE, decode_rows
from preprocessing.errors import GenotypeFormatError
from preprocessing.plink import PlinkFileset, read_plink
from preprocessing.site_inputs import check_unique_iids, read_clinical_rows

MISSING = -1
APOE_E4_SNP = "rs429358"
APOE_E4_ALLELE = "C"
APOE_COLUMN = "APOE_e4"
_COMPLEMENT = str.maketrans("ACGT", "TGCA")
CATALOG_COLUMNS = ("rsid", "gene", "chrom", "pos_grch37", "risk_allele")


@dataclass(frozen=True)
class CatalogSNP:
    """One catalog row; ``pos`` is None where the catalog says NA."""

    rsid: str
    gene: str
    chrom: str
    pos: int | None
    risk_allele: str


def default_catalog_path() -> Path:
    """The catalog shipped with the package (``preprocessing/data/ad-snp-catalog.json``).

    JSON rather than TSV: Flower packs only .py/.toml/.md/.yaml/.json files into the app it
    ships to SuperNodes, and the sites need the default catalog."""
    return Path(str(resources.files("preprocessing") / "data" / "ad-snp-catalog.json"))


def _catalog_lines(path: Path) -> list[str]:
    """A catalog file as TSV lines; ``.json`` files hold {"columns": [...], "rows": [...]}."""
    text = path.read_text()
    if path.suffix != ".json":
        return text.splitlines()
    try:
        doc = json.loads(text)
        rows = [doc["columns"], *doc["rows"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise GenotypeFormatError(f"not a catalog JSON ({exc})", path) from None
    return ["\t".join("NA" if v is None else str(v) for v in row) for row in rows]


def load_catalog(path: str | Path | None = None) -> list[CatalogSNP]:
    """Read a catalog: a TSV (``#`` comment lines, then a header with at least
    rsid, gene, chrom, pos_grch37, risk_allele) or the same table as JSON."""
    path = Path(path) if path is not None else default_catalog_path()
    try:
        lines = _catalog_lines(path)
    except FileNotFoundError:
        raise GenotypeFormatError("SNP catalog not found", path) from None
    body = [(n, ln) for n, ln in enumerate(lines, start=1) if ln.strip() and not ln.startswith("#")]
    if not body:
        raise GenotypeFormatError("SNP catalog has no header or rows", path)
    header = body[0][1].split("\t")
    missing_cols = [c for c in CATALOG_COLUMNS if c not in header]
    if missing_cols:
        raise GenotypeFormatError(
            f"SNP catalog lacks column(s) {missing_cols}; expected a tab-separated header with "
            f"{', '.join(CATALOG_COLUMNS)}",
            path,
            body[0][0],
        )
    col = {c: header.index(c) for c in CATALOG_COLUMNS}
    out: list[CatalogSNP] = []
    seen: set[str] = set()
    for n, ln in body[1:]:
        f = ln.split("\t")
        if len(f) < len(header):
            raise GenotypeFormatError(f"expected {len(header)} tab-separated fields", path, n)
        rsid, allele, pos = f[col["rsid"]], f[col["risk_allele"]].upper(), f[col["pos_grch37"]]
        if allele not in ("A", "C", "G", "T"):
            raise GenotypeFormatError(f"risk allele {allele!r} is not A, C, G or T", path, n)
        if rsid in seen:
            raise GenotypeFormatError(f"duplicated rsID {rsid}", path, n)
        if pos not in ("NA", "") and not pos.isdigit():
            raise GenotypeFormatError(f"position {pos!r} is neither an integer nor NA", path, n)
        seen.add(rsid)
        out.append(
            CatalogSNP(
                rsid, f[col["gene"]], f[col["chrom"]], int(pos) if pos.isdigit() else None, allele
            )
        )
    return out


@dataclass
class PanelReport:
    """What happened to each catalog SNP."""

    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # not in the fileset
    swapped: list[str] = field(default_factory=list)  # risk allele is the .bim A2
    flipped: list[str] = field(default_factory=list)  # strand complemented
    dropped: dict[str, str] = field(default_factory=dict)  # rsID -> reason
    apoe_source: dict[str, int] = field(default_factory=dict)  # source -> subjects

    def to_dict(self) -> dict:
        return {
            "found": self.found,
            "missing": self.missing,
            "swapped": self.swapped,
            "flipped": self.flipped,
            "dropped": self.dropped,
            "apoe_e4_source": self.apoe_source,
        }


def align(a1: str, a2: str, risk: str) -> tuple[str, bool, bool]:
    """How to read the risk allele at a SNP with .bim alleles a1/a2.

    Returns (status, risk_is_a1, flipped) with status "ok", "ambiguous" or "mismatch".
    """
    a1, a2, risk = a1.upper(), a2.upper(), risk.upper()
    if {a1, a2} in ({"A", "T"}, {"C", "G"}):
        return "ambiguous", False, False
    if risk in (a1, a2):
        return "ok", risk == a1, False
    comp = risk.translate(_COMPLEMENT)
    if comp in (a1, a2):
        return "ok", comp == a1, True
    return "mismatch", False, False


def risk_allele_counts(fs: PlinkFileset, row: int, risk_is_a1: bool) -> np.ndarray:
    """(n_samples,) int8 copies of the risk allele at variant ``row``; MISSING where uncalled."""
    a1 = A1_COUNT_OF_CODE[decode_rows(np.asarray(fs.bed[row : row + 1]), fs.n_samples)[0]]
    out = a1 if risk_is_a1 else np.where(a1 >= 0, 2 - a1, MISSING)
    return out.astype(np.int8)


def apoe_from_clinical(path: str | Path, iids: list[str]) -> np.ndarray:
    """(len(iids),) int8 e4 copies from APGEN1/APGEN2 of a clinical.csv (PTID = IID), read
    with the sites' one clinical-table reader (encodings, BOM, stripped IDs); MISSING for
    subjects absent from the table, with an empty APGEN, or whose rows disagree."""
    table = read_clinical_rows(path)
    rows = table.rows
    need = [c for c in ("PTID", "APGEN1", "APGEN2") if c not in rows.columns]
    if need:
        raise GenotypeFormatError(
            f"clinical table lacks column(s) {need} needed for the APOE e4 count (or genotype "
            f"{APOE_E4_SNP})",
            table.path,
            1,
        )
    e4: dict[str, int] = {}
    for sid, a1, a2, line in zip(
        rows["PTID"], rows["APGEN1"], rows["APGEN2"], rows["_line"], strict=True
    ):
        vals = (str(a1), str(a2))
        if "" in vals or "NA" in vals:
            continue
        if not all(v in ("2", "3", "4", "2.0", "3.0", "4.0") for v in vals):
            raise GenotypeFormatError(
                f"APGEN1/APGEN2 must be APOE alleles 2, 3 or 4, got {vals}; fix the value or "
                "leave it empty (missing)",
                table.path,
                int(line),
            )
        count = sum(float(v) == 4 for v in vals)
        e4[sid] = count if e4.get(sid, count) == count else MISSING
    return np.array([e4.get(i, MISSING) for i in iids], dtype=np.int8)


def build_panel(
    bfile: str | Path | PlinkFileset,
    catalog: str | Path | list[CatalogSNP] | None = None,
    clinical_csv: str | Path | None = None,
) -> tuple[pd.DataFrame, PanelReport]:
    """Per-subject panel table (index IID; one int8 column per aligned catalog SNP, then
    ``APOE_e4``) and the report. Genotype codes: 0/1/2 risk-allele copies, MISSING = -1."""
    fs = bfile if isinstance(bfile, PlinkFileset) else read_plink(bfile)
    check_unique_iids(fs.fam.fid, fs.fam.iid, fs.prefix.with_name(fs.prefix.name + ".fam"))
    snps = catalog if isinstance(catalog, list) else load_catalog(catalog)
    ids = fs.bim.strings(1)
    row_of = {snp_id: i for i, snp_id in enumerate(ids)}
    a1s, a2s = fs.bim.strings(4), fs.bim.strings(5)
    report = PanelReport()
    columns: dict[str, np.ndarray] = {}
    for snp in snps:
        row = row_of.get(snp.rsid)
        if row is None:
            report.missing.append(snp.rsid)
            continue
        status, risk_is_a1, flipped = align(a1s[row], a2s[row], snp.risk_allele)
        if status != "ok":
            report.dropped[snp.rsid] = (
                f"{status}: alleles {a1s[row]}/{a2s[row]}, risk allele {snp.risk_allele}"
            )
            continue
        report.found.append(snp.rsid)
        if flipped:
            report.flipped.append(snp.rsid)
        if not risk_is_a1:
            report.swapped.append(snp.rsid)
        columns[snp.rsid] = risk_allele_counts(fs, row, risk_is_a1)
    columns[APOE_COLUMN] = apoe_e4(fs, columns, snps, clinical_csv, report)
    table = pd.DataFrame(columns, index=pd.Index(fs.fam.iid, name="IID"))
    return table, report


def apoe_e4(
    fs: PlinkFileset,
    columns: dict[str, np.ndarray],
    snps: list[CatalogSNP],
    clinical_csv: str | Path | None,
    report: PanelReport,
) -> np.ndarray:
    """e4 copies per subject: rs429358 C copies where called, else APGEN1/APGEN2."""
    e4 = np.full(fs.n_samples, MISSING, dtype=np.int8)
    if APOE_E4_SNP in columns:
        risk = next((s.risk_allele for s in snps if s.rsid == APOE_E4_SNP), APOE_E4_ALLELE)
        called = columns[APOE_E4_SNP]
        if risk == APOE_E4_ALLELE:
            e4 = called.copy()
        else:  # a user catalog that names T: count C = 2 - T copies
            e4 = np.where(called >= 0, 2 - called, MISSING).astype(np.int8)
    elif clinical_csv is None:
        why = "dropped (see report)" if APOE_E4_SNP in report.dropped else "not genotyped"
        raise GenotypeFormatError(
            f"{APOE_E4_SNP} is {why} and no clinical table with APGEN1/APGEN2 was given; "
            "pass clinical_csv (the site's clinical.csv) to count APOE e4",
            fs.prefix,
        )
    report.apoe_source[APOE_E4_SNP] = int((e4 >= 0).sum())
    need = e4 < 0
    if need.any() and clinical_csv is not None:
        clinical = apoe_from_clinical(clinical_csv, fs.fam.iid)
        e4 = np.where(need, clinical, e4).astype(np.int8)
        report.apoe_source["APGEN1/APGEN2"] = int((need & (clinical >= 0)).sum())
    report.apoe_source["missing"] = int((e4 < 0).sum())
    return e4
