"""The compiled .bed kernels and their numpy fallbacks give the same answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from preprocessing import bed_kernels, hwe, plink
from preprocessing.bed_kernels import (
    A1_COUNT_OF_CODE,
    count_genotypes,
    decode_rows,
    extract_rows,
    sample_missing_counts,
)
from preprocessing.plink_io import pack_bed_rows
from preprocessing.qc import qc_config, run_qc
from tests.preprocessing.plink_cases import random_fileset, read_outputs

pytestmark = pytest.mark.skipif(not bed_kernels.HAVE_EXTENSION, reason="extension not built")


def no_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in (bed_kernels, hwe, plink):
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
