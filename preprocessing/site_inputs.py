"""One reader of a site folder, shared by the census and ``g2i-prepare``: the clinical table,
the diagnosis vocabulary, the scan files, the genotyped IDs, and the identity checks of the
join between them.

Rules (the README's "Input problems handled" lists what each bad input gets):

- ``clinical.csv`` is UTF-8 with or without a BOM (or UTF-16 with a BOM); a file that is not
  valid UTF-8 is read as latin-1 (Windows exports). Comma-separated; a header that holds a
  single field with ``;`` or tabs is split on that instead (European spreadsheets).
- Column names and IDs lose surrounding whitespace; after that, IDs must match exactly.
- Several rows with one PTID (one per visit) make one subject when their diagnoses agree (the
  first row is kept); conflicting diagnoses exclude that subject, naming the lines.
- A PTID that matches a genotype or scan ID only once leading zeros are ignored, and a PTID
  column that matches nothing while another column matches, are errors that say what to fix.
- The same IID under two FIDs in ``genotypes.fam`` is an error: the join is by IID.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from conf.schema import DataConfig
from preprocessing.errors import ClinicalTableError, GenotypeFormatError
from preprocessing.plink import read_fam

LABELS = ("CN", "MCI", "AD")
ID_COLUMN = "PTID"
SCAN_SUFFIXES = (".nii.gz", ".nii")
_SHOWN = 3  # offending IDs named in one message


@dataclass
class ClinicalTable:
    """A decoded ``clinical.csv``.

    ``rows``: every data row as strings ("" where empty), PTID stripped, plus ``_line`` (the
    1-based file line). ``subjects``: one row per PTID in file order (index PTID) with ``line``,
    ``label`` (0 CN, 1 MCI, 2 AD, NaN unusable) and ``conflict`` (why the subject's rows
    disagree, "" when they do not). ``notes``: what the reader resolved by rule.
    """

    path: Path
    encoding: str
    rows: pd.DataFrame
    dx_column: str = ""
    subjects: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


def decode_text(path: Path) -> tuple[str, str]:
    """(text, encoding) of a small text file: UTF-16/UTF-8 by BOM, UTF-8, else latin-1."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), "utf-16"
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def _split_rows(text: str, path: Path) -> list[tuple[int, list[str]]]:
    """(line, fields) of each non-blank CSV record."""
    first = text.lstrip().partition("\n")[0]
    delimiter = ","
    if "," not in first:
        delimiter = next((d for d in (";", "\t") if d in first), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    out: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                out.append((reader.line_num, [f.strip() for f in fields]))
    except csv.Error as exc:
        raise ClinicalTableError(
            f"not a CSV table ({exc}); save it as comma-separated text", path, reader.line_num
        ) from None
    return out


def read_clinical_rows(path: str | Path) -> ClinicalTable:
    """Decode and check a clinical table; no diagnosis mapping (see ``read_clinical``).

    Raises:
        ClinicalTableError: missing or empty file, no data rows, no PTID column, a row whose
            field count differs from the header's, an empty PTID.
    """
    path = Path(path)
    if not path.is_file():
        raise ClinicalTableError(
            "missing; every site needs a clinical table with a PTID column, a diagnosis "
            "column (DX or DX_bl) and, without APOE SNPs, APGEN1/APGEN2",
            path,
        )
    text, encoding = decode_text(path)
    records = _split_rows(text, path)
    if not records:
        raise ClinicalTableError(
            "empty file; write a header line (PTID,DX,...) and one row per subject", path
        )
    header_line, header = records[0]
    if ID_COLUMN not in header:
        raise ClinicalTableError(
            f"no {ID_COLUMN} column (columns: {header}); name the subject-ID column {ID_COLUMN}",
            path,
            header_line,
        )
    if len(records) == 1:
        raise ClinicalTableError(
            "only a header, no subject rows; add one row per subject", path, header_line
        )
    for line, fields in records[1:]:
        if len(fields) != len(header):
            raise ClinicalTableError(
                f"{len(fields)} fields where the header has {len(header)} ({header}); "
                "fill every column, leaving empty values between commas",
                path,
                line,
            )
        if not fields[header.index(ID_COLUMN)]:
            raise ClinicalTableError(
                f"empty {ID_COLUMN}; give every row its subject ID", path, line
            )
    rows = pd.DataFrame([f for _, f in records[1:]], columns=header, dtype="string")
    rows["_line"] = [line for line, _ in records[1:]]
    notes = [f"read as {encoding} (not valid UTF-8)"] if encoding == "latin-1" else []
    return ClinicalTable(path, encoding, rows, notes=notes)


def diagnosis_column(columns: list[str], cfg: DataConfig) -> str:
    """``cfg.dx_column``, or for ``auto`` ``DX`` when present, else ``DX_bl``."""
    if cfg.dx_column != "auto":
        return cfg.dx_column if cfg.dx_column in columns else ""
    return next((c for c in ("DX", "DX_bl") if c in columns), "")


def map_diagnoses(clinical: pd.DataFrame, cfg: DataConfig) -> pd.Series:
    """Diagnosis label (0 CN, 1 MCI, 2 AD, or NaN when missing / unknown) per row.

    ``cfg.dx_column`` ``auto`` takes ``DX`` when present, else ``DX_bl``; ``cfg.dx_map`` maps
    ADNI vocabularies (CN, SMC, EMCI, LMCI, MCI, AD, Dementia) onto the three classes,
    ignoring case and surrounding spaces.
    """
    column = diagnosis_column(list(clinical.columns), cfg)
    if not column:
        raise ClinicalTableError(
            f"clinical table has no diagnosis column (looked for {cfg.dx_column!r}; columns: "
            f"{[c for c in clinical.columns if not str(c).startswith('_')]}); set data.dx_column"
        )
    mapping = {str(k).strip().upper(): v for k, v in cfg.dx_map.items()}
    names = clinical[column].astype("string").str.strip().str.upper()
    return names.map(lambda v: LABELS.index(mapping[v]) if v in mapping else np.nan).astype(float)


def read_clinical(path: str | Path, cfg: DataConfig | None = None) -> ClinicalTable:
    """A clinical table with one row per subject and its diagnosis label (see module doc)."""
    cfg = DataConfig() if cfg is None else cfg
    table = read_clinical_rows(path)
    rows = table.rows
    try:
        labels = map_diagnoses(rows, cfg)
    except ClinicalTableError as exc:
        raise ClinicalTableError(str(exc), table.path, 1) from None
    table.dx_column = diagnosis_column(list(rows.columns), cfg)
    subjects: dict[str, dict[str, object]] = {}
    for sid, lines in rows.groupby(ID_COLUMN, sort=False).groups.items():
        first = int(lines[0])
        usable = labels.loc[lines].dropna().unique()
        conflict = ""
        if len(lines) > 1:
            where = ", ".join(
                f"{int(rows.at[i, '_line'])} ({rows.at[i, table.dx_column] or 'empty'})"
                for i in lines
            )
            if len(usable) > 1:
                conflict = (
                    f"conflicting diagnoses on lines {where}; keep one row per subject (the "
                    "baseline visit) or set data.dx_column=DX_bl"
                )
            else:
                table.notes.append(f"{ID_COLUMN} {sid} on lines {where}: one subject")
        subjects[str(sid)] = {
            "line": int(rows.at[first, "_line"]),
            "label": float(usable[0]) if len(usable) == 1 else np.nan,
            "conflict": conflict,
        }
    table.subjects = pd.DataFrame.from_dict(subjects, orient="index")
    table.subjects.index.name = ID_COLUMN
    return table


def scan_files(mri_dir: str | Path) -> dict[str, Path]:
    """Subject ID -> ``mri/<ID>.nii.gz`` (preferred) or ``.nii``, broken links included (the
    caller says why they are unusable)."""
    out: dict[str, Path] = {}
    mri_dir = Path(mri_dir)
    if not mri_dir.is_dir():
        return out
    for p in sorted(mri_dir.iterdir()):
        suffix = next((s for s in SCAN_SUFFIXES if p.name.endswith(s)), None)
        if suffix is None or (p.exists() and not p.is_file()):
            continue
        sid = p.name.removesuffix(suffix).strip()
        if sid not in out or suffix == ".nii.gz":
            out[sid] = p
    return out


def genotyped_ids(fam_path: str | Path) -> list[str]:
    """IIDs of a .fam in file order (``check_unique_iids`` applied)."""
    fam = read_fam(fam_path)
    check_unique_iids(fam.fid, fam.iid, fam_path)
    return list(fam.iid)


def check_unique_iids(fid: list[str], iid: list[str], fam_path: str | Path) -> None:
    """Raise when an IID is under more than one FID (one sample genotyped in two batches):
    subjects are joined by IID, so the rows of such a sample would be confused.

    Raises:
        GenotypeFormatError: naming the IIDs, their FIDs and how to keep one copy.
    """
    fids: dict[str, list[str]] = {}
    for f, i in zip(fid, iid, strict=True):
        fids.setdefault(i, []).append(f)
    dups = {i: f for i, f in fids.items() if len(f) > 1}
    if dups:
        shown = "; ".join(f"IID {i} under FIDs {', '.join(f)}" for i, f in dups.items())
        raise GenotypeFormatError(
            f"{len(dups)} IID(s) appear more than once ({_cap(shown)}); subjects are joined by "
            "IID, so keep one copy of each sample (plink1.9 --bfile genotypes --remove "
            "drop.txt --make-bed, drop.txt listing the FID IID to drop) or give each its own IID",
            fam_path,
        )


def _cap(text: str, sep: str = "; ") -> str:
    parts = text.split(sep)
    more = f"{sep}and {len(parts) - _SHOWN} more" if len(parts) > _SHOWN else ""
    return sep.join(parts[:_SHOWN]) + more


def _canonical(sid: str) -> str:
    """The ID with leading zeros of every digit run dropped."""
    return re.sub(r"\d+", lambda m: str(int(m.group())), sid)


def check_join(table: ClinicalTable, genotyped: set[str], scans: set[str]) -> None:
    """Raise when the clinical IDs evidently fail to join the genotype / scan IDs.

    Raises:
        ClinicalTableError: PTIDs that match only once leading zeros are ignored; or no PTID
            matching at all while another column of the table holds those IDs.
    """
    ids = list(table.subjects.index)
    others = genotyped | scans
    where = {s: "genotypes.fam" if s in genotyped else "mri/" for s in others}
    canon = {_canonical(s): s for s in others}
    zeros = [
        (sid, canon[_canonical(sid)])
        for sid in ids
        if sid not in others and _canonical(sid) in canon
    ]
    if zeros:
        shown = "; ".join(
            f"line {table.subjects.at[a, 'line']}: {a!r} is {b!r} in {where[b]}" for a, b in zeros
        )
        raise ClinicalTableError(
            f"{len(zeros)} {ID_COLUMN}(s) differ from the genotype / scan IDs only by leading "
            f"zeros ({_cap(shown)}); a spreadsheet that read the IDs as numbers dropped them: "
            f"restore them (format the {ID_COLUMN} column as text) or rename the other files",
            table.path,
        )
    if not others or set(ids) & others:
        return
    best, n_best = "", 0
    for col in table.rows.columns:
        if col in (ID_COLUMN, "_line"):
            continue
        n = len(set(table.rows[col].dropna().astype(str)) & others)
        if n > n_best:
            best, n_best = col, n
    if best:
        raise ClinicalTableError(
            f"no {ID_COLUMN} matches a genotyped or scanned subject, but column {best!r} holds "
            f"{n_best} of their IDs; put the subject IDs (as in genotypes.fam and mri/) in the "
            f"{ID_COLUMN} column",
            table.path,
            1,
        )
