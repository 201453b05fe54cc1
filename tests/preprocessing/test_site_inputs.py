"""The one clinical-table reader of census and prepare: encodings, shape errors, duplicate
and whitespace IDs, the diagnosis vocabulary, and the join checks against .fam and mri/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from preprocessing.errors import ClinicalTableError, GenotypeFormatError
from preprocessing.site_inputs import check_join, genotyped_ids, read_clinical, scan_files


def _csv(tmp_path: Path, data: bytes | str, name: str = "clinical.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


@pytest.mark.parametrize(
    ("encoded", "encoding"),
    [
        ("PTID,DX,SITE\nS1,CN,Zürich\nS2,AD,Créteil\n".encode(), "utf-8"),
        ("\ufeffPTID,DX,SITE\nS1,CN,Zürich\nS2,AD,Créteil\n".encode(), "utf-8"),
        ("PTID,DX,SITE\nS1,CN,Zürich\nS2,AD,Créteil\n".encode("latin-1"), "latin-1"),
        ("PTID,DX,SITE\nS1,CN,Zürich\nS2,AD,Créteil\n".encode("utf-16"), "utf-16"),
    ],
)
def test_encodings_give_the_same_table(encoded: bytes, encoding: str, tmp_path: Path) -> None:
    t = read_clinical(_csv(tmp_path, encoded))
    assert t.encoding == encoding
    assert list(t.subjects.index) == ["S1", "S2"]  # a BOM does not hide the PTID column
    assert t.rows["SITE"].tolist() == ["Zürich", "Créteil"]
    np.testing.assert_array_equal(t.subjects["label"].to_numpy(), [0, 2])


@pytest.mark.parametrize(
    ("content", "message", "line"),
    [
        ("", "empty file", None),
        ("\n\n", "empty file", None),
        ("PTID,DX\n", "only a header", 1),
        ("ID,DX\nS1,CN\n", "no PTID column", 1),
        ("PTID,DX,APGEN1,APGEN2\nS1,CN,3,4\nS2,AD,4\n", "3 fields where the header has 4", 3),
        ("PTID,DX\nS1,CN\n,AD\n", "empty PTID", 3),
        ("PTID,Group\nS1,CN\n", "diagnosis column", 1),
    ],
)
def test_bad_tables_name_file_line_and_fix(
    content: str, message: str, line: int | None, tmp_path: Path
) -> None:
    path = _csv(tmp_path, content)
    with pytest.raises(ClinicalTableError, match=message) as err:
        read_clinical(path)
    assert str(path) in str(err.value) and err.value.line == line


def test_missing_table_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClinicalTableError, match="missing; every site needs"):
        read_clinical(tmp_path / "clinical.csv")


def test_semicolon_table_and_stray_spaces(tmp_path: Path) -> None:
    t = read_clinical(_csv(tmp_path, " PTID ; DX \n  S1 ;cn\nS2  ; Dementia \n"))
    assert list(t.subjects.index) == ["S1", "S2"]
    np.testing.assert_array_equal(t.subjects["label"].to_numpy(), [0, 2])


def test_vocabulary_and_dx_bl_only(tmp_path: Path) -> None:
    t = read_clinical(_csv(tmp_path, "PTID,DX_bl\nA,ad\nB,Dementia\nC,LMCI\nD,SMC\nE,??\n"))
    assert t.dx_column == "DX_bl"
    np.testing.assert_array_equal(t.subjects["label"].to_numpy(), [2, 2, 1, 0, np.nan])


def test_duplicate_ptids_agreeing_merge_conflicting_are_flagged(tmp_path: Path) -> None:
    path = _csv(tmp_path, "PTID,DX\nS1,CN\nS2,MCI\nS1,CN\nS2,AD\nS3,\nS3,MCI\n")
    t = read_clinical(path)
    assert list(t.subjects.index) == ["S1", "S2", "S3"]  # one row per subject
    assert t.subjects.at["S1", "label"] == 0 and not t.subjects.at["S1", "conflict"]
    assert np.isnan(t.subjects.at["S2", "label"])
    assert "conflicting diagnoses on lines 3 (MCI), 5 (AD)" in t.subjects.at["S2", "conflict"]
    assert t.subjects.at["S3", "label"] == 1  # an empty visit does not conflict
    assert any("S1" in n for n in t.notes)


def test_leading_zeros_lost_by_a_spreadsheet_are_an_error(tmp_path: Path) -> None:
    t = read_clinical(_csv(tmp_path, "PTID,DX\n12,CN\n7,AD\n0099,MCI\n"))
    with pytest.raises(ClinicalTableError, match="leading zeros") as err:
        check_join(t, {"0012", "0099"}, {"0007"})
    msg = str(err.value)
    assert "'12' is '0012' in genotypes.fam" in msg and "'7' is '0007' in mri/" in msg
    assert "line 2" in msg and "format the PTID column as text" in msg


def test_ids_in_the_wrong_column_are_an_error(tmp_path: Path) -> None:
    t = read_clinical(_csv(tmp_path, "PTID,SubjectID,DX\n1,S01,CN\n2,S02,AD\n"))
    with pytest.raises(ClinicalTableError, match="column 'SubjectID' holds 2"):
        check_join(t, {"S01", "S02"}, {"S01"})
    check_join(t, {"1"}, set())  # one matching ID: no complaint


def test_iid_under_two_fids_is_an_error(tmp_path: Path) -> None:
    fam = tmp_path / "g.fam"
    fam.write_text("B1 S1 0 0 1 1\nB1 S2 0 0 2 2\nB2 S1 0 0 1 1\n")
    with pytest.raises(GenotypeFormatError, match="IID S1 under FIDs B1, B2") as err:
        genotyped_ids(fam)
    assert str(fam) in str(err.value) and "--remove" in str(err.value)


def test_scan_files_keeps_broken_links(tmp_path: Path) -> None:
    mri = tmp_path / "mri"
    mri.mkdir()
    (mri / "S1.nii.gz").write_bytes(b"x")
    (mri / "S2.nii").write_bytes(b"x")
    (mri / "S3.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (mri / "notes.txt").write_text("x")
    scans = scan_files(mri)
    assert sorted(scans) == ["S1", "S2", "S3"] and not scans["S3"].exists()
