"""Reading PLINK filesets: validation errors name the file and line; bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from preprocessing.errors import G2IError, GenotypeFormatError
from preprocessing.plink import chrom_code, read_plink
from preprocessing.plink_io import Sample, Variant, write_plink
from preprocessing.qc import qc_config, run_qc
from tests.preprocessing.plink_cases import needs_plink, read_outputs, run_plink


def small(tmp: Path, n_samples: int = 8, n_snps: int = 5) -> Path:
    rng = np.random.default_rng(0)
    g = rng.integers(0, 3, (n_snps, n_samples)).astype(np.int8)
    variants = [Variant("1", f"rs{j}", 0, 100 + j, "A", "G") for j in range(n_snps)]
    samples = [Sample(f"F{i}", f"I{i}", sex=1, phenotype=1) for i in range(n_samples)]
    write_plink(tmp / "x", g, variants, samples)
    return tmp / "x"


def expect(prefix: Path, ext: str, match: str, line: int | None = None) -> GenotypeFormatError:
    with pytest.raises(GenotypeFormatError, match=match) as err:
        read_plink(prefix)
    assert err.value.path == prefix.with_name(prefix.name + ext)
    assert str(err.value.path) in str(err.value)
    assert err.value.line == line
    if line is not None:
        assert f"line {line}" in str(err.value)
    return err.value


def test_reads_a_valid_fileset(tmp_path: Path) -> None:
    fs = read_plink(small(tmp_path))
    assert (fs.n_samples, fs.n_snps, fs.bed.shape) == (8, 5, (5, 2))
    assert fs.bim.strings(1) == [f"rs{j}" for j in range(5)]
    assert fs.fam.case_control and fs.fam.control.all() and fs.fam.founder.all()


def test_token_strings_of_rows_and_of_a_file_without_line_ends(tmp_path: Path) -> None:
    """``Bim.strings`` gives the tokens of any rows in the order asked, with or without a
    line end in the file (one variant, no final newline)."""
    from preprocessing.plink import read_bim

    bim = read_bim(Path(f"{small(tmp_path)}.bim"))
    assert bim.strings(1, np.array([3, 0, 3])) == ["rs3", "rs0", "rs3"]
    assert bim.strings(5) == ["G"] * 5 and bim.strings(1, np.array([], int)) == []
    one = tmp_path / "one.bim"
    one.write_bytes(b"2 rs_only 0.5 77 C T")
    assert read_bim(one).strings(1) == ["rs_only"] and read_bim(one).strings(4) == ["C"]


def test_truncated_bed(tmp_path: Path) -> None:
    prefix = small(tmp_path)
    bed = prefix.with_suffix(".bed")
    bed.write_bytes(bed.read_bytes()[:-1])
    expect(prefix, ".bed", "truncated")


@pytest.mark.parametrize("which", [".fam", ".bim"])
def test_fam_or_bim_disagreeing_with_bed_size(tmp_path: Path, which: str) -> None:
    prefix = small(tmp_path)
    p = prefix.with_suffix(which)
    extra = "F9 I9 0 0 1 1\n" if which == ".fam" else "1\trs99\t0\t999\tA\tG\n"
    p.write_text(p.read_text() + extra)
    expect(prefix, ".bed", "does not match the .bim/.fam")


@pytest.mark.parametrize("which", [".bed", ".bim", ".fam"])
def test_missing_files(tmp_path: Path, which: str) -> None:
    prefix = small(tmp_path)
    prefix.with_suffix(which).unlink()
    expect(prefix, which, "not found")


def test_wrong_magic_and_sample_major(tmp_path: Path) -> None:
    prefix = small(tmp_path)
    bed = prefix.with_suffix(".bed")
    data = bed.read_bytes()
    bed.write_bytes(b"\x00\x00" + data[2:])
    expect(prefix, ".bed", "not a PLINK 1 .bed")
    bed.write_bytes(data[:2] + b"\x00" + data[3:])
    expect(prefix, ".bed", "individual-major")


def test_bad_bim_and_fam_lines(tmp_path: Path) -> None:
    prefix = small(tmp_path)
    bim = prefix.with_suffix(".bim")
    good = bim.read_text()
    lines = good.splitlines()
    bim.write_text("\n".join(lines[:2] + ["1\trs7\t0\t5\tA"] + lines[3:]) + "\n")
    expect(prefix, ".bim", "expected 6", line=3)
    bim.write_text("\n".join(lines[:3] + ["1\trs8\t0\tabc\tA\tG"] + lines[4:]) + "\n")
    expect(prefix, ".bim", "position 'abc'", line=4)
    bim.write_text("\n".join(["chrQ\trs0\t0\t1\tA\tG"] + lines[1:]) + "\n")
    expect(prefix, ".bim", "unknown chromosome", line=1)
    bim.write_text("\n".join(lines[:4] + ["1\trs1\t0\t9\tA\tG"]) + "\n")
    expect(prefix, ".bim", "duplicated SNP ID 'rs1'", line=5)
    bim.write_text(good)
    fam = prefix.with_suffix(".fam")
    flines = fam.read_text().splitlines()
    fam.write_text("\n".join(flines[:5] + ["F0 I0 0 0 1 1"] + flines[6:]) + "\n")
    expect(prefix, ".fam", "duplicated sample", line=6)
    fam.write_text("\n".join(flines[:1] + ["F1 I1 0 0 1"] + flines[2:]) + "\n")
    expect(prefix, ".fam", "expected 6 fields", line=2)


def test_chrom_codes() -> None:
    assert [chrom_code(c) for c in ("1", "chr22", "X", "chrY", "XY", "MT", "M", "26", "0")] == [
        1, 22, 23, 24, 25, 26, 26, 26, 0,
    ]  # fmt: skip
    assert chrom_code("27") is None and chrom_code("scaffold1") is None


def test_split_chromosome_is_refused(tmp_path: Path) -> None:
    g = np.zeros((3, 4), dtype=np.int8)
    variants = [Variant(c, f"s{j}", 0, j + 1, "A", "G") for j, c in enumerate(["1", "2", "1"])]
    write_plink(tmp_path / "s", g, variants, [Sample(f"F{i}", f"I{i}") for i in range(4)])
    with pytest.raises(GenotypeFormatError, match="split"):
        run_qc(tmp_path / "s", qc_config(maf=0.01))


@needs_plink
def test_all_missing_snp_and_sample_without_genotypes_match_plink(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    g = rng.integers(0, 3, (12, 10)).astype(np.int8)
    g[4] = -1  # all-missing SNP
    g[:, 7] = -1  # a sample with no genotypes
    variants = [Variant("1", f"rs{j}", 0, 100 - j, "C", "T") for j in range(12)]  # unsorted
    samples = [Sample(f"F{i}", f"I{i}", sex=2, phenotype=2 - i % 2) for i in range(10)]
    write_plink(tmp_path / "m", g, variants, samples)
    for flags in ([], ["--mind", "0.5"], ["--geno", "0.2", "--maf", "0.05"]):
        run_plink(
            "--bfile", str(tmp_path / "m"), *flags, "--make-bed", "--out", str(tmp_path / "r")
        )
        cfg = qc_config(
            mind=0.5 if "--mind" in flags else None,
            geno=0.2 if "--geno" in flags else None,
            maf=0.05 if "--maf" in flags else None,
        )
        res = run_qc(tmp_path / "m", cfg, tmp_path / "o")
        assert read_outputs(tmp_path / "o") == read_outputs(tmp_path / "r")
        (tmp_path / "r.irem").unlink(missing_ok=True)
    assert res.removed_snps(1) == ["rs4"]
    assert G2IError in GenotypeFormatError.__mro__


def test_qc_on_unreadable_input_names_the_file(tmp_path: Path) -> None:
    prefix = small(tmp_path)
    shutil.copy(prefix.with_suffix(".fam"), tmp_path / "y.fam")
    with pytest.raises(GenotypeFormatError, match="y.bim"):
        run_qc(tmp_path / "y", qc_config())


@needs_plink
def test_noncanonical_bim_is_rewritten_like_plink(tmp_path: Path) -> None:
    """Spaces, 'chr' prefixes, letters for X/MT, cM values, leading zeros, unsorted positions."""
    prefix = small(tmp_path, n_samples=9, n_snps=6)
    prefix.with_suffix(".bim").write_text(
        "chr1 rs0 0.0 0150 A G\n"
        "1\trs1\t1.23456789\t100\tA\tG\n"
        "chr1  rs2 2.5e-5 120 A G\n"
        "X\trs3\t0\t5\tA\tG\n"
        "X\trs4\t-0.0\t+7\tA\tG\n"
        "MT\trs5\t12345678.9\t1\tA\tG\r\n"
    )
    run_plink("--bfile", str(prefix), "--make-bed", "--out", str(tmp_path / "ref"))
    run_qc(prefix, qc_config(), tmp_path / "ours")
    assert read_outputs(tmp_path / "ours") == read_outputs(tmp_path / "ref")
    # the same with every cM "0" (the fast writer): positions still rewritten
    bim = prefix.with_suffix(".bim")
    bim.write_text("\n".join(" ".join(x if i != 2 else "0" for i, x in enumerate(line.split()))
                             for line in bim.read_text().splitlines()) + "\n")  # fmt: skip
    run_plink("--bfile", str(prefix), "--make-bed", "--out", str(tmp_path / "ref"))
    run_qc(prefix, qc_config(), tmp_path / "ours")
    assert read_outputs(tmp_path / "ours") == read_outputs(tmp_path / "ref")
