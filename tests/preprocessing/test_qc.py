"""QC agrees with plink1.9 on the same inputs: kept sets, per-filter counts, output bytes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from preprocessing import bed_kernels
from preprocessing.errors import GenotypeFormatError
from preprocessing.plink import read_plink
from preprocessing.plink_io import Sample, Variant, write_plink
from preprocessing.qc import (
    FAILED_HWE,
    KEPT,
    QCError,
    QCThresholds,
    qc_config,
    qc_options,
    run_qc,
)
from preprocessing.qc_cli import main as qc_main
from tests.preprocessing.plink_cases import needs_plink, random_fileset, read_outputs, run_plink

pytestmark = needs_plink

FLAG_SETS = {
    "paper": dict(mind=0.1, geno=0.05, hwe=1e-3, maf=0.01),
    "midp": dict(geno=0.1, hwe=0.01, mods=("midp",)),
    "include-nonctrl": dict(hwe=0.05, mods=("include-nonctrl",)),
    "keep-allele-order": dict(maf=0.05, kao=True),
    "mind-only": dict(mind=0.1),
    "none": dict(),
}


def plink_args(flags: dict) -> list[str]:
    args: list[str] = []
    for k in ("mind", "geno", "maf"):
        if k in flags:
            args += [f"--{k}", repr(flags[k])]
    if "hwe" in flags:
        args += ["--hwe", repr(flags["hwe"]), *flags.get("mods", ())]
    if flags.get("kao"):
        args.append("--keep-allele-order")
    return args


def plink_counts(log: str) -> dict[str, int]:
    """Per-filter removal counts from a plink1.9 log."""
    pats = {
        "mind": r"(\d+) (?:people|person) removed due to missing genotype data \(--mind\)",
        "geno": r"(\d+) variants? removed due to missing genotype data \(--geno\)",
        "hwe": r"--hwe: (\d+) variants? removed",
        "maf": r"(\d+) variants? removed due to minor allele threshold",
    }
    out = {}
    for k, pat in pats.items():
        m = re.search(pat, log)
        out[k] = int(m.group(1)) if m else 0
    return out


def compare_with_plink(bfile: Path, flags: dict, tmp: Path) -> dict:
    """Run both tools; assert identical outputs and counts; return our report."""
    ref, ours = tmp / "plink", tmp / "ours"
    proc = run_plink("--bfile", str(bfile), *plink_args(flags), "--make-bed", "--out", str(ref))
    assert proc.returncode == 0, proc.stdout
    cfg = qc_config(
        flags.get("mind"),
        flags.get("geno"),
        flags.get("maf"),
        flags.get("hwe"),
        flags.get("mods", ()),
    )
    result = run_qc(bfile, cfg, ours, keep_allele_order=bool(flags.get("kao")))
    rep = result.report()
    expected = read_outputs(ref)
    got = read_outputs(ours)
    assert set(got) == set(expected)
    for ext in expected:
        assert got[ext] == expected[ext], f"{ext} differs from plink1.9"
    counts = plink_counts(Path(f"{ref}.log").read_text())
    assert rep["samples"]["removed_mind"] == counts["mind"]
    assert rep["variants"]["removed"] == {k: counts[k] for k in ("geno", "hwe", "maf")}
    return rep


@pytest.mark.parametrize("phenotype", ["cc", "cases", "quant", "none"])
@pytest.mark.parametrize("flags", list(FLAG_SETS), ids=list(FLAG_SETS))
def test_random_filesets_match_plink(phenotype: str, flags: str, tmp_path: Path) -> None:
    bfile = random_fileset(
        tmp_path / "in", seed=len(flags) * 7 + len(phenotype), phenotype=phenotype
    )
    compare_with_plink(bfile, FLAG_SETS[flags], tmp_path)


def test_every_filter_fires_on_the_random_fileset(tmp_path: Path) -> None:
    rep = compare_with_plink(random_fileset(tmp_path / "in", seed=3), FLAG_SETS["paper"], tmp_path)
    assert rep["samples"]["removed_mind"] > 0
    assert all(n > 0 for n in rep["variants"]["removed"].values()), rep["variants"]["removed"]
    assert rep["variants"]["allele_order_swapped"] > 0


def test_plink_dummy_and_simulate_data(tmp_path: Path) -> None:
    run_plink("--dummy", "83", "700", "0.04", "--make-bed", "--out", str(tmp_path / "dummy"))
    compare_with_plink(tmp_path / "dummy", FLAG_SETS["paper"], tmp_path)
    sim = tmp_path / "sim.txt"
    sim.write_text("300 null 0.00 1.00 1.00 1.00\n20 disease 0.05 0.95 2.00 mult\n")
    proc = run_plink(
        "--simulate", str(sim), "--simulate-ncases", "40", "--simulate-ncontrols", "50",
        "--simulate-prevalence", "0.1", "--simulate-missing", "0.03", "--make-bed",
        "--out", str(tmp_path / "simulated"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    compare_with_plink(tmp_path / "simulated", dict(geno=0.02, hwe=0.01, maf=0.1), tmp_path)


def boundary_fileset(prefix: Path) -> Path:
    """20 samples, hand-made SNPs at the exact edges of --mind 0.1 / --geno 0.1 / --maf 0.1."""
    n = 20
    rows: list[list[int]] = []
    # MAF exactly 0.1 (4 minor alleles of 40) and just below (3 of 40); a 0.5 tie
    rows.append([1] * 4 + [0] * 16)
    rows.append([1] * 3 + [0] * 17)
    rows.append([2] * 10 + [0] * 10)
    # missing rate exactly 0.1 (2 of 20) and just above (3 of 20)
    rows.append([-1] * 2 + [1] * 9 + [0] * 9)
    rows.append([-1] * 3 + [1] * 9 + [0] * 8)
    # an all-missing SNP and a SNP far from HWE
    rows.append([-1] * n)
    rows.append([1] * 18 + [0, 2])
    # filler SNPs (complete) to reach 30; with the all-missing SNP, sample 19 misses 3 calls
    # (= 0.1 of 30: kept), sample 18 misses 4 (> 0.1: removed), sample 17 misses all
    rng = np.random.default_rng(5)
    while len(rows) < 30:
        rows.append(list(rng.binomial(2, 0.4, n)))
    g = np.array(rows, dtype=np.int8)
    g[[8, 9], 19] = -1
    g[[8, 9, 10], 18] = -1
    g[:, 17] = -1
    variants = [Variant("1", f"b{j}", 0, 1000 + j, "A", "C") for j in range(len(rows))]
    samples = [
        Sample(f"F{i}", f"I{i}", sex=1 + i % 2, phenotype=1 + (i % 3 == 0)) for i in range(n)
    ]
    write_plink(prefix, g, variants, samples)
    return prefix


def test_boundaries_match_plink(tmp_path: Path) -> None:
    bfile = boundary_fileset(tmp_path / "edge")
    rep = compare_with_plink(bfile, dict(mind=0.1, geno=0.1, maf=0.1), tmp_path)
    removed = {d["iid"] for d in rep["samples"]["removed_ids"]}
    assert removed == {"I17", "I18"}
    kept = (tmp_path / "ours.bim").read_text().split()
    assert "b0" in kept and "b1" not in kept and "b2" in kept  # MAF 0.1 kept, 0.075 not
    assert "b5" not in kept


def test_hwe_threshold_equal_to_p_keeps_the_snp(tmp_path: Path) -> None:
    """At --hwe p the SNP stays, just above it goes (same in plink1.9). b6 (17 hets of 19)
    is also kept out at p by plink's shortcut when neither tail has a further term."""
    bfile = boundary_fileset(tmp_path / "edge")
    mods = ("include-nonctrl",)
    pvals = run_qc(bfile, qc_config(hwe=0.4, hwe_modifiers=mods)).hwe_p_removed
    for snp in ("b2", "b6"):
        for thr in (pvals[snp], pvals[snp] * (1 + 1e-9)):
            rep = compare_with_plink(bfile, dict(hwe=thr, mods=mods), tmp_path)
            removed = snp in rep["variants"]["removed_ids"]["hwe"]
            assert removed == (thr > pvals[snp] or snp == "b6")


def test_cohort_generator_sites_match_plink(cohort_dir: Path, tmp_path: Path) -> None:
    sites = sorted(cohort_dir.glob("site-*"))
    assert sites
    for site in sites:
        rep = compare_with_plink(
            site / "genotypes", dict(mind=0.05, geno=0.05, hwe=1e-5, maf=0.01), tmp_path
        )
        assert rep["hwe"]["controls_only"]


def test_cli_writes_plink_outputs_log_irem_and_report(tmp_path: Path) -> None:
    bfile = random_fileset(tmp_path / "in", seed=3)
    out = tmp_path / "cli"
    rc = qc_main(
        ["--bfile", str(bfile), "--mind", "0.1", "--geno", "0.05", "--hwe", "1e-3", "midp",
         "--maf", "0.01", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    run_plink(
        "--bfile", str(bfile), "--mind", "0.1", "--geno", "0.05", "--hwe", "1e-3", "midp",
        "--maf", "0.01", "--make-bed", "--out", str(tmp_path / "ref"),
    )  # fmt: skip
    assert read_outputs(out) == read_outputs(tmp_path / "ref")
    rep = json.loads(Path(f"{out}.qc.json").read_text())
    counts = plink_counts(Path(f"{tmp_path / 'ref'}.log").read_text())
    assert rep["variants"]["removed"]["hwe"] == counts["hwe"]
    assert len(rep["variants"]["removed_ids"]["geno"]) == counts["geno"]
    assert set(rep["hwe"]["p_removed"]) == set(rep["variants"]["removed_ids"]["hwe"])
    assert all(p < 1e-3 for p in rep["hwe"]["p_removed"].values())
    assert "--mind" in Path(f"{out}.log").read_text()
    assert Path(f"{out}.irem").read_text().count("\n") == rep["samples"]["removed_mind"]


def test_cli_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert qc_main(["--bfile", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing.fam" in capsys.readouterr().err
    bfile = random_fileset(tmp_path / "in", seed=1)
    assert qc_main(["--bfile", str(bfile), "--hwe", "1e-3", "bogus"]) == 2


def test_all_variants_removed_is_an_error_like_plink(tmp_path: Path) -> None:
    g = np.zeros((5, 12), dtype=np.int8)  # monomorphic SNPs: --maf removes them all
    variants = [Variant("1", f"m{j}", 0, 10 + j, "A", "G") for j in range(5)]
    write_plink(
        tmp_path / "mono", g, variants, [Sample(f"F{i}", f"I{i}", sex=2) for i in range(12)]
    )
    proc = run_plink(
        "--bfile",
        str(tmp_path / "mono"),
        "--maf",
        "0.01",
        "--make-bed",
        "--out",
        str(tmp_path / "r"),
    )
    assert proc.returncode != 0 and "All variants removed" in proc.stderr
    with pytest.raises(QCError, match="maf"):
        run_qc(tmp_path / "mono", qc_config(maf=0.01))


def test_status_codes_and_api_without_outputs(tmp_path: Path) -> None:
    bfile = random_fileset(tmp_path / "in", seed=4)
    res = run_qc(bfile, qc_config(hwe=1e-3))
    assert set(np.unique(res.variant_status)) <= {KEPT, FAILED_HWE}
    assert not list(tmp_path.glob("*.qc.json"))


def sorted_copy(bfile: Path, tmp: Path) -> Path:
    """``bfile`` as plink1.9 writes it (variants sorted), so QC streams its output rows."""
    out = tmp / "sorted"
    run_plink("--bfile", str(bfile), "--keep-allele-order", "--make-bed", "--out", str(out))
    return out


@pytest.mark.parametrize("order", ["unsorted", "sorted"])
def test_small_blocks_on_two_threads_match_plink(
    order: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # 16-row blocks: every pass (--mind, filters, output) crosses many block and chromosome
    # boundaries, with two worker threads finishing out of order
    monkeypatch.setattr(bed_kernels, "_BLOCK_BYTES", 16 * 16)
    monkeypatch.setenv("G2I_THREADS", "2")
    bfile = random_fileset(tmp_path / "in", seed=8)
    if order == "sorted":
        bfile = sorted_copy(bfile, tmp_path)
    assert bed_kernels.block_rows(read_plink(bfile).bed.shape[1]) == 16
    rep = compare_with_plink(bfile, FLAG_SETS["paper"], tmp_path)
    assert all(rep["variants"]["removed"].values())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """g2i-qc in a child process (a crash there fails the test instead of killing pytest)."""
    cmd = [sys.executable, "-m", "preprocessing.qc_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_out_equal_to_bfile_sets_the_inputs_aside_as_plink_does(tmp_path: Path) -> None:
    bfile = random_fileset(tmp_path / "mine" / "x", seed=2)
    ref = tmp_path / "ref"
    ref.mkdir()
    original = read_outputs(bfile)
    for ext, data in original.items():
        (ref / f"x{ext}").write_bytes(data)
    flags = ["--mind", "0.1", "--maf", "0.01", "--make-bed"]
    proc = run_cli("--bfile", str(bfile), *flags, "--out", str(bfile))
    assert proc.returncode == 0, proc.stderr
    assert "renamed" in proc.stderr
    assert run_plink("--bfile", str(ref / "x"), *flags, "--out", str(ref / "x")).returncode == 0
    # the QC'd fileset is plink's, and the inputs are kept as x.bed~ / x.bim~ / x.fam~
    assert read_outputs(bfile) == read_outputs(ref / "x")
    for ext, data in original.items():
        assert Path(f"{bfile}{ext}~").read_bytes() == data == (ref / f"x{ext}~").read_bytes()


def test_failed_run_leaves_no_partial_outputs(tmp_path: Path) -> None:
    g = np.zeros((5, 12), dtype=np.int8)  # monomorphic: --maf removes everything
    variants = [Variant("1", f"m{j}", 0, 10 + j, "A", "G") for j in range(5)]
    write_plink(tmp_path / "mono", g, variants, [Sample(f"F{i}", f"I{i}") for i in range(12)])
    with pytest.raises(QCError):
        run_qc(tmp_path / "mono", qc_config(maf=0.01), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mono.bed", "mono.bim", "mono.fam"]


def test_empty_bim_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    bfile = random_fileset(tmp_path / "e", seed=1)
    Path(f"{bfile}.bim").write_text("")
    proc = run_cli("--bfile", str(bfile), "--maf", "0.01", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "e.bim" in proc.stderr and "no variants" in proc.stderr
    assert not list(tmp_path.glob("o.*"))


@pytest.mark.parametrize("value", ["0.6", "1"])
def test_maf_above_one_half_is_refused(value: str, tmp_path: Path) -> None:
    bfile = random_fileset(tmp_path / "in", seed=1)
    assert run_plink("--bfile", str(bfile), "--maf", value, "--make-bed").returncode != 0
    proc = run_cli("--bfile", str(bfile), "--maf", value, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--maf" in proc.stderr and "0.5" in proc.stderr
    assert not list(tmp_path.glob("o.*"))


def test_thresholds_have_the_fields_of_the_hydra_schema() -> None:
    from conf.schema import QCConfig

    assert [f.name for f in fields(QCThresholds)] == [f.name for f in fields(QCConfig)]
    assert qc_options(QCConfig()) == qc_options(QCThresholds())


def test_cli_does_not_import_hydra_or_omegaconf() -> None:
    code = (
        "import sys; from preprocessing.qc_cli import main; import preprocessing.qc; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'conf')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_rerun_replaces_the_previous_outputs_and_a_failed_one_keeps_them(tmp_path: Path) -> None:
    """A second run into the same --out replaces the first run's .bed/.bim/.fam with
    plink1.9's for the new flags; a run that fails in the filters (every variant removed)
    leaves the previous outputs as they were."""
    bfile = random_fileset(tmp_path / "in", seed=5)
    ours, ref = tmp_path / "ours", tmp_path / "plink"
    run_qc(bfile, qc_config(maf=0.01), ours)
    first = read_outputs(ours)
    g = np.zeros((5, 12), dtype=np.int8)  # monomorphic SNPs: --maf removes them all
    variants = [Variant("1", f"m{j}", 0, 10 + j, "A", "G") for j in range(5)]
    write_plink(tmp_path / "mono", g, variants, [Sample(f"F{i}", f"I{i}") for i in range(12)])
    with pytest.raises(QCError, match="all variants removed"):
        run_qc(tmp_path / "mono", qc_config(maf=0.01), ours)
    assert read_outputs(ours) == first
    flags = {"mind": 0.1, "geno": 0.05, "maf": 0.05}
    run_qc(bfile, qc_config(0.1, 0.05, 0.05, None, ()), ours)
    assert (
        run_plink(
            "--bfile", str(bfile), *plink_args(flags), "--make-bed", "--out", str(ref)
        ).returncode
        == 0
    )
    assert read_outputs(ours) == read_outputs(ref) != first
    assert not list(tmp_path.glob(".ours*"))  # no temporary file left


def test_mind_counts_taken_before_the_bim_is_read_equal_the_usual_ones(tmp_path: Path) -> None:
    """Without chrY, --mind's counts start from the .fam and the .bed's size alone (beside the
    .bim's parsing) and equal ``sample_missing``'s; with a chrY row they are not used."""
    from preprocessing.qc import _prefetched_missing, sample_missing
    from preprocessing.qc_prefetch import Prefetch

    if not bed_kernels.HAVE_EXTENSION:
        pytest.skip("the compiled kernels are not built")
    for chroms, used in ((("1", "2", "X", "22"), True), (("1", "Y"), False)):
        bfile = random_fileset(tmp_path / f"in{len(chroms)}", seed=3, chroms=chroms)
        fs = read_plink(bfile)
        prefetch = Prefetch(bfile, mind=True, bim=False, n_samples=fs.n_samples)
        assert prefetch.bim() is None  # the caller parses the .bim
        early = _prefetched_missing(prefetch.missing(), fs)
        if used:
            assert early is not None and np.array_equal(early, sample_missing(fs)[0])
        else:
            assert early is None


@pytest.mark.parametrize("n_samples", [1, 3, 4, 5, 31, 32, 33, 61, 64, 65])
def test_prefetch_mask_and_missing_counts_equal_the_numpy_ones(
    n_samples: int, tmp_path: Path
) -> None:
    """The CLI's numpy-free first pass: its sample mask is ``sample_mask_words``'s bytes, and
    its missing counts (the kernel reading the .bed itself) equal ``sample_missing``'s, for
    sample counts that fill a .bed byte or a 64-bit word or leave either partial."""
    from preprocessing.bed_kernels import HAVE_EXTENSION, sample_mask_words
    from preprocessing.qc import _prefetched_missing, sample_missing
    from preprocessing.qc_prefetch import all_samples_mask, missing_counts

    if not HAVE_EXTENSION:
        pytest.skip("the compiled kernels are not built")
    expected = sample_mask_words(np.ones(n_samples, dtype=bool)).tobytes()
    assert bytes(all_samples_mask(n_samples)) == expected
    bfile = random_fileset(
        tmp_path / "in", n_samples=n_samples, seed=n_samples, missing=0.2, chroms=("1", "2", "X")
    )
    fs = read_plink(bfile)
    counts = missing_counts(Path(f"{bfile}.bed"), n_samples)
    assert (counts.n_samples, counts.n_snps) == (fs.n_samples, fs.n_snps)
    got = _prefetched_missing(counts, fs)
    assert got is not None and np.array_equal(got, sample_missing(fs)[0])
    assert sample_missing(fs)[0].sum() > 0


def test_prefetched_bim_validates_as_the_file_does(tmp_path: Path) -> None:
    """``read_bim`` on the prefetched tokens gives the arrays of its own parse, and a bad
    line found by the prefetch is reported with its line number, as without it."""
    from preprocessing.bed_kernels import HAVE_EXTENSION
    from preprocessing.plink import read_bim
    from preprocessing.qc_prefetch import ParsedBim

    if not HAVE_EXTENSION:
        pytest.skip("the compiled kernels are not built")
    bfile = random_fileset(tmp_path / "in", seed=7)
    path = Path(f"{bfile}.bim")
    own, pre = read_bim(path), read_bim(path, ParsedBim(path.read_bytes()))
    for name in ("tok_start", "tok_end", "line_no", "chrom", "pos"):
        assert np.array_equal(getattr(own, name), getattr(pre, name)), name
    assert own.cm_text == pre.cm_text and own.pos_canonical == pre.pos_canonical
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = b"1\tbroken\t0\t100\tA\n"
    path.write_bytes(b"".join(lines))
    with pytest.raises(GenotypeFormatError, match="expected 6") as own_err:
        read_bim(path)
    with pytest.raises(GenotypeFormatError, match="expected 6") as pre_err:
        read_bim(path, ParsedBim(path.read_bytes()))
    assert str(own_err.value) == str(pre_err.value) and "line 5" in str(pre_err.value)


@needs_plink
def test_cli_uses_the_prefetched_mind_counts_without_chry_and_matches_plink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without chrY the CLI's --mind counts are the prefetched ones (``sample_missing`` is
    never called); with chrY they are counted again, males only there. Outputs equal
    plink1.9's either way."""
    import preprocessing.qc as qc_module

    calls = []
    usual = qc_module.sample_missing
    monkeypatch.setattr(qc_module, "sample_missing", lambda fs: calls.append(1) or usual(fs))
    for k, (chroms, recounted) in enumerate(((("1", "2", "X"), False), (("1", "Y", "22"), True))):
        bfile = random_fileset(tmp_path / f"in{k}", seed=11 + k, chroms=chroms, missing=0.08)
        ours, ref = tmp_path / f"ours{k}", tmp_path / f"ref{k}"
        flags = {"mind": 0.1, "geno": 0.1, "maf": 0.05}
        calls.clear()
        assert qc_main(["--bfile", str(bfile), *plink_args(flags), "--out", str(ours)]) == 0
        assert bool(calls) == (recounted or not bed_kernels.HAVE_EXTENSION)
        args = ("--bfile", str(bfile), *plink_args(flags), "--make-bed", "--out", str(ref))
        assert run_plink(*args).returncode == 0
        assert read_outputs(ours) == read_outputs(ref)
        assert json.loads(Path(f"{ours}.qc.json").read_text())["samples"]["removed_mind"] > 0
    capsys.readouterr()


def test_a_block_that_fails_in_the_filtering_pass_ends_the_run_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output rows are written by the worker threads in block order; when one block
    fails, the blocks after it stop waiting for its place in the file, the run raises that
    block's error and leaves no output behind."""
    import preprocessing.qc as qc_module

    monkeypatch.setattr(bed_kernels, "_BLOCK_BYTES", 16 * 16)
    monkeypatch.setenv("G2I_THREADS", "2")
    bfile = sorted_copy(random_fileset(tmp_path / "in", seed=8), tmp_path)
    calls = []
    usual = qc_module.extract_rows

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (test)")
        return usual(*args, **kwargs)

    monkeypatch.setattr(qc_module, "extract_rows", flaky)
    with pytest.raises(OSError, match="disk full"):
        run_qc(bfile, qc_config(0.1, 0.05, 0.05, None, ()), tmp_path / "out")
    assert len(calls) >= 3 and not list(tmp_path.glob("out.*")) and not list(tmp_path.glob(".out*"))
