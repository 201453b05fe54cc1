"""The compiled .bed kernels and their numpy fallbacks give the same answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from preprocessing import bed_kernels, hwe, plink, qc
from preprocessing.bed_kernels import (
    A1_COUNT_OF_CODE,
    count_genotypes,
    decode_rows,
    extract_rows,
    sample_missing_counts,
)
from preprocessing.plink_io import pack_bed_rows
from preprocessing.qc import QCThresholds, qc_config, run_qc, variant_filters, variant_filters_numpy
from tests.preprocessing.plink_cases import random_fileset, read_outputs

pytestmark = pytest.mark.skipif(not bed_kernels.HAVE_EXTENSION, reason="extension not built")


def no_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in (bed_kernels, hwe, plink, qc):
        monkeypatch.setattr(mod, "_ext", None)


@pytest.fixture(params=["cpu-extensions", "portable"])
def kernel_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test runs with the AVX-512 counting path (where the CPU has it) and without."""
    ext = bed_kernels._ext  # held here: tests swap the module attribute out
    old = ext.set_cpu_extensions(request.param == "cpu-extensions")
    yield request.param
    ext.set_cpu_extensions(old)


@pytest.mark.parametrize("n_samples", [1, 31, 32, 33, 70, 203, 257, 1001])
def test_kernels_equal_numpy(
    monkeypatch: pytest.MonkeyPatch, n_samples: int, kernel_path: str
) -> None:
    rng = np.random.default_rng(n_samples)
    g = rng.integers(-1, 3, (23, n_samples)).astype(np.int8)
    bed = pack_bed_rows(g)
    np.testing.assert_array_equal(A1_COUNT_OF_CODE[decode_rows(bed, n_samples)], g)
    masks = [rng.random(n_samples) < 0.5, np.ones(n_samples, bool), np.zeros(n_samples, bool)]
    rows = rng.permutation(23)[:15]
    rev = rng.random(15) < 0.5
    keep = np.flatnonzero(rng.random(n_samples) < 0.7)
    runs = np.delete(np.arange(n_samples), [n_samples // 3, n_samples - 1])  # long kept runs
    fast = (
        count_genotypes(bed, n_samples, masks, 2, 20),
        sample_missing_counts(bed, n_samples, masks[0]),
        extract_rows(bed, n_samples, rows, rev),
        extract_rows(bed, n_samples, rows, rev, keep),
        extract_rows(bed, n_samples, rows, rev, runs),
    )
    no_extension(monkeypatch)
    slow = (
        count_genotypes(bed, n_samples, masks, 2, 20),
        sample_missing_counts(bed, n_samples, masks[0]),
        extract_rows(bed, n_samples, rows, rev),
        extract_rows(bed, n_samples, rows, rev, keep),
        extract_rows(bed, n_samples, rows, rev, runs),
    )
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
    # the counts are what the genotypes say
    sub = g[2:20][:, masks[0]]
    expected = np.stack([(sub == k).sum(1) for k in (2, 1, 0, -1)])
    np.testing.assert_array_equal(fast[0][0], expected)
    swapped = np.where(g[rows] >= 0, 2 - g[rows], -1)
    np.testing.assert_array_equal(
        fast[3], pack_bed_rows(np.where(rev[:, None], swapped, g[rows])[:, keep])
    )


def test_qc_without_extension_writes_the_same_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bfile = random_fileset(tmp_path / "in", seed=6)
    cfg = qc_config(mind=0.1, geno=0.05, hwe=1e-3, maf=0.01)
    run_qc(bfile, cfg, tmp_path / "fast")
    no_extension(monkeypatch)
    run_qc(bfile, cfg, tmp_path / "slow")
    assert read_outputs(tmp_path / "fast") == read_outputs(tmp_path / "slow")


def test_hwe_decisions_without_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    counts = [rng.integers(0, 25, 3000) for _ in range(3)]
    fast = [hwe.hwe_fails(*counts, thr, midp) for thr in (1e-3, 0.05) for midp in (False, True)]
    no_extension(monkeypatch)
    slow = [hwe.hwe_fails(*counts, thr, midp) for thr in (1e-3, 0.05) for midp in (False, True)]
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sample_missing_counts_past_every_counter_width(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1,100 rows at a 60% missing rate: per-sample totals pass 255 (the 8-bit counters),
    # and the row count is no multiple of the 3 / 15 / 255-row counter stages
    rng = np.random.default_rng(5)
    g = rng.integers(0, 3, (1100, 77)).astype(np.int8)
    g[rng.random(g.shape) < 0.6] = -1
    bed = pack_bed_rows(g)
    mask = rng.random(77) < 0.8
    fast = sample_missing_counts(bed, 77, mask, 7, 1100)
    np.testing.assert_array_equal(fast, np.where(mask, (g[7:] == -1).sum(axis=0), 0))
    assert fast.max() > 255
    no_extension(monkeypatch)
    np.testing.assert_array_equal(sample_missing_counts(bed, 77, mask, 7, 1100), fast)


def test_ordered_writer_places_blocks_in_order_whatever_thread_finishes_first(
    tmp_path: Path,
) -> None:
    """Blocks written from threads that finish in reverse order land in block order after
    the header; a failed block unblocks the later ones, which raise instead of waiting."""
    import threading
    import time

    from preprocessing.bed_kernels import OrderedWriter

    parts = [bytes([k]) * (k * 7 + 1) for k in range(6)]
    path = tmp_path / "out.bin"
    with OrderedWriter(path, len(parts), b"HDR") as writer:

        def block(k: int) -> None:
            time.sleep(0.02 * (len(parts) - k))  # later blocks are ready first
            writer.write(k, memoryview(parts[k]))

        threads = [threading.Thread(target=block, args=(k,)) for k in range(len(parts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert path.read_bytes() == b"HDR" + b"".join(parts)

    errors = []
    with OrderedWriter(tmp_path / "failed.bin", 3) as writer:

        def later() -> None:
            try:
                writer.write(2, memoryview(b"x"))
            except RuntimeError as exc:
                errors.append(exc)

        t = threading.Thread(target=later)
        t.start()
        writer.write(0, memoryview(b"a"))
        writer.abort(1)  # block 1 failed
        t.join(timeout=5)
    assert not t.is_alive() and len(errors) == 1


def group_counts_of(codes: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """GroupCounts (6, 4, n_snps) int32 of a (n_snps, n_samples) matrix of genotype indices
    (0 hom A1, 1 het, 2 hom A2, 3 missing) under 6 sample masks, by plain counting."""
    out = np.zeros((6, 4, codes.shape[0]), dtype=np.int32)
    for g, mask in enumerate(groups):
        for k in range(4):
            out[g, k] = (codes[:, mask] == k).sum(axis=1)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_variant_filters_equal_the_numpy_rules_bit_for_bit(seed: int) -> None:
    """The kernel behind ``variant_filters`` gives the numpy reference's status and A2
    frequencies exactly, for every filter combination, on autosomes, chrX, chrY, chrXY and
    chrMT, with monomorphic, all-missing and HWE-violating SNPs and groups left empty."""
    rng = np.random.default_rng(seed)
    n_samples, n_snps = 150, 3000
    chrom = rng.choice(np.array([1, 7, 23, 24, 25, 26], dtype=np.int16), n_snps)
    freq = np.where(
        rng.random(n_snps) < 0.2, rng.uniform(0, 0.02, n_snps), rng.uniform(0, 1, n_snps)
    )
    codes = rng.binomial(2, freq[:, None], (n_snps, n_samples))
    codes[rng.random(n_snps) < 0.02] = 0  # monomorphic
    codes[rng.random(n_snps) < 0.03] = rng.choice([0, 2], n_samples)  # no heterozygotes
    missing = rng.random((n_snps, n_samples)) < rng.choice([0.0, 0.02, 0.2], n_snps)[:, None]
    codes[missing] = 3
    codes[rng.random(n_snps) < 0.01] = 3  # no calls at all
    founder, control = rng.random(n_samples) < 0.8, rng.random(n_samples) < 0.5
    for males in (rng.random(n_samples) < 0.5, np.zeros(n_samples, bool)):
        fc = founder & control
        groups = [np.ones(n_samples, bool), founder, fc, males, males & founder, males & fc]
        counts = group_counts_of(codes, groups)
        for geno, hwe_p, maf, midp, controls in [
            (0.05, 1e-3, 0.01, False, True),
            (0.1, 0.05, 0.2, True, False),
            (1.0, 1e-4, 0.0, False, False),
            (0.02, 0.0, 0.05, False, True),
            (1.0, 0.0, 0.0, True, True),
        ]:
            config = QCThresholds(geno=geno, hwe=hwe_p, maf=maf, hwe_midp=midp)
            fast = variant_filters(counts, chrom, config, controls)
            ref = variant_filters_numpy(counts, chrom, config, controls)
            np.testing.assert_array_equal(fast[0], ref[0])
            assert fast[1].tobytes() == ref[1].tobytes()
            if geno < 1.0 and hwe_p > 0.0 and maf > 0.0:
                assert set(np.unique(fast[0]).tolist()) == {0, 1, 2, 3}  # every filter fired


@pytest.mark.parametrize("suffix", ["", '"q', "\\b", "é", "\x7f"])
def test_report_json_equals_json_dumps_of_the_report(suffix: str, tmp_path: Path) -> None:
    """The .qc.json text built with the kernel's ID lists is ``json.dumps(report())``, for
    plain IDs and for IDs that JSON escapes (then json.dumps writes those lists)."""
    prefix = random_fileset(tmp_path / "in", n_samples=80, snps_per_chrom=60)
    bim = prefix.with_suffix(".bim")
    lines = bim.read_text(encoding="utf-8").splitlines()
    fields_ = [line.split("\t") for line in lines]
    for j, f in enumerate(fields_):
        if j % 3 == 0:
            f[1] = f[1] + suffix
    bim.write_text("".join("\t".join(f) + "\n" for f in fields_), encoding="utf-8")
    config = qc_config(mind=0.1, geno=0.05, hwe=1e-3, maf=0.05)
    result = run_qc(prefix, config, tmp_path / "out")
    text = result.report_json()
    assert text == json.dumps(result.report())
    assert (tmp_path / "out.qc.json").read_text() == text + "\n"
    removed = json.loads(text)["variants"]["removed_ids"]
    assert all(removed[k] for k in ("geno", "hwe", "maf"))
    assert any(i.endswith(suffix) for ids in removed.values() for i in ids)
