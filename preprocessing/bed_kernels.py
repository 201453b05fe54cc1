"""Counting genotypes straight from packed .bed bytes, without a float matrix.

A .bed row (one SNP) holds 2 bits per sample: 00 hom A1, 01 missing, 10 het, 11 hom A2.
Viewed as 64-bit words, ``lo = w & 0x55..`` and ``hi = (w >> 1) & 0x55..`` give, under a
sample mask, ``popcount(lo) = n_missing + n_hom_a2``, ``popcount(hi) = n_het + n_hom_a2`` and
``popcount(lo & hi) = n_hom_a2``; the subset size gives ``n_hom_a1``. The compiled module
``_bed_kernels`` does this with hardware popcounts (and releases the GIL, so row blocks run on
threads); the numpy versions below decode through a byte lookup table and give the same
answers, so the package works where the extension could not be built.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # pragma: no cover - which branch runs depends on the build
    from preprocessing import _bed_kernels as _ext
except ImportError:  # pragma: no cover
    _ext = None

HAVE_EXTENSION = _ext is not None

# byte -> the 4 sample codes it holds, (256, 4) uint8, first sample first
CODES_OF_BYTE = ((np.arange(256, dtype=np.uint16)[:, None] >> (2 * np.arange(4))) & 3).astype(
    np.uint8
)
# 2-bit code -> A1 count (-1 missing)
A1_COUNT_OF_CODE = np.array([2, -1, 1, 0], dtype=np.int8)
_REVERSE_CODE = np.array([3, 1, 2, 0], dtype=np.uint8)

_ROWS_PER_TASK = 1 << 15


def n_threads() -> int:
    """Threads for row blocks: ``G2I_THREADS`` if set, else up to 2 (QC is memory-bound)."""
    env = os.environ.get("G2I_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(2, os.cpu_count() or 1))


def sample_mask_words(selected: np.ndarray) -> np.ndarray:
    """Boolean sample selection (n_samples,) -> uint64 words (ceil(n/32),) with bit 2*s set."""
    sel = np.asarray(selected, dtype=bool)
    n_words = (sel.size + 31) // 32
    bits = np.zeros(n_words * 64, dtype=np.uint8)
    bits[0 : 2 * sel.size : 2] = sel
    return np.packbits(bits, bitorder="little").view("<u8").astype(np.uint64)


def _blocks(start: int, stop: int) -> list[tuple[int, int]]:
    """Row blocks: at most _ROWS_PER_TASK rows, and at least one per thread."""
    size = min(_ROWS_PER_TASK, max(2048, -(-(stop - start) // n_threads())))
    return [(s, min(s + size, stop)) for s in range(start, stop, size)]


def _run_blocks(fn, blocks: list[tuple[int, int]]) -> None:
    threads = n_threads()
    if threads == 1 or len(blocks) == 1:
        for b in blocks:
            fn(*b)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: fn(*b), blocks))


def decode_rows(rows: np.ndarray, n_samples: int) -> np.ndarray:
    """Packed rows (n_rows, ceil(n_samples/4)) uint8 -> 2-bit codes (n_rows, n_samples) uint8."""
    rows = np.asarray(rows, dtype=np.uint8)
    return CODES_OF_BYTE[rows].reshape(rows.shape[0], -1)[:, :n_samples]


def count_genotypes(
    bed: np.ndarray,
    n_samples: int,
    masks: list[np.ndarray],
    start: int = 0,
    stop: int | None = None,
) -> np.ndarray:
    """Genotype counts of rows ``start:stop`` within each sample subset.

    bed: (n_snps, ceil(n_samples/4)) uint8 (a memory map is fine); masks: boolean
    (n_samples,) arrays. Returns (n_masks, 4, n_rows) int32 counts of
    [hom A1, het, hom A2, missing] (.bim A1 = column 5), one contiguous row per count.
    """
    stop = bed.shape[0] if stop is None else stop
    n_rows = stop - start
    raw = np.zeros((len(masks), 3, n_rows), dtype=np.uint32)
    if n_rows and masks:
        if _ext is not None and bed.flags.c_contiguous and len(masks) <= 16:
            words = np.ascontiguousarray(np.stack([sample_mask_words(m) for m in masks]))
            nb = bed.shape[1]

            def run(a: int, b: int) -> None:
                # each block writes its own columns of the shared (K, 3, n_rows) array
                view = raw.reshape(-1)[a - start :]
                _ext.count_masks(bed, nb, a, b, words, len(masks), view, n_rows)

            _run_blocks(run, _blocks(start, stop))
        else:
            _count_numpy(bed, n_samples, masks, start, stop, raw)
    lo, hi, both = (raw[:, k].view(np.int32) for k in range(3))
    out = np.empty((len(masks), 4, n_rows), dtype=np.int32)
    sizes = np.array([int(np.count_nonzero(m)) for m in masks], dtype=np.int32)[:, None]
    np.copyto(out[:, 2], both)
    np.subtract(hi, both, out=out[:, 1])
    np.subtract(lo, both, out=out[:, 3])
    out[:, 0] = sizes - lo - hi + both
    return out


def _count_numpy(bed, n_samples, masks, start, stop, raw) -> None:
    sel = np.stack([np.asarray(m, dtype=bool) for m in masks]).astype(np.uint32)  # (K, n)
    for a in range(start, stop, 4096):
        b = min(a + 4096, stop)
        codes = decode_rows(bed[a:b], n_samples)
        lo = (codes & 1).astype(np.uint32)
        hi = (codes >> 1).astype(np.uint32)
        for k, x in enumerate((lo, hi, lo & hi)):
            raw[:, k, a - start : b - start] = sel @ x.T


def sample_missing_counts(
    bed: np.ndarray, n_samples: int, mask: np.ndarray, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Missing calls per sample over rows ``start:stop``, counting only samples in ``mask``.

    Returns (n_samples,) int64.
    """
    stop = bed.shape[0] if stop is None else stop
    if stop <= start:
        return np.zeros(n_samples, dtype=np.int64)
    if _ext is not None and bed.flags.c_contiguous:
        words = sample_mask_words(mask)
        nb = bed.shape[1]
        parts: list[np.ndarray] = []

        def run(a: int, b: int) -> None:
            acc = np.zeros(words.size * 32, dtype=np.uint32)
            _ext.sample_missing(bed, nb, a, b, words, acc)
            parts.append(acc)

        _run_blocks(run, _blocks(start, stop))
        return np.sum(parts, axis=0, dtype=np.int64)[:n_samples]
    total = np.zeros(n_samples, dtype=np.int64)
    for a in range(start, stop, 4096):
        total += (decode_rows(bed[a : min(a + 4096, stop)], n_samples) == 1).sum(axis=0)
    return np.where(np.asarray(mask, dtype=bool), total, 0)


def extract_rows(
    bed: np.ndarray,
    n_samples: int,
    rows: np.ndarray,
    reverse: np.ndarray,
    keep_samples: np.ndarray | None = None,
) -> np.ndarray:
    """Selected rows repacked for the kept samples, A1/A2 swapped where ``reverse``.

    rows: (n_out,) int indices; reverse: (n_out,) bool; keep_samples: ascending sample
    indices, or None for all. Returns (n_out, ceil(n_keep/4)) uint8 with zero padding bits.
    """
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    rev = np.ascontiguousarray(reverse, dtype=np.uint8)
    all_samples = keep_samples is None or len(keep_samples) == n_samples
    keep = (
        np.zeros(0, dtype=np.int64)
        if all_samples
        else np.ascontiguousarray(keep_samples, dtype=np.int64)
    )
    n_keep = n_samples if all_samples else keep.size
    out = np.empty((rows.size, (n_keep + 3) // 4), dtype=np.uint8)
    if _ext is not None and bed.flags.c_contiguous and (n_keep > 0 or all_samples):
        nb = bed.shape[1]

        def run(a: int, b: int) -> None:
            _ext.extract_rows(bed, nb, rows[a:b], rev[a:b], keep, n_keep, out[a:b])

        _run_blocks(run, _blocks(0, rows.size))
        return out
    weights = (1 << (2 * np.arange(4))).astype(np.uint8)
    for a in range(0, rows.size, 4096):
        b = min(a + 4096, rows.size)
        codes = decode_rows(bed[rows[a:b]], n_samples)
        if not all_samples:
            codes = codes[:, keep]
        codes = np.where(rev[a:b, None].astype(bool), _REVERSE_CODE[codes], codes)
        pad = (-n_keep) % 4
        codes = np.concatenate([codes, np.zeros((b - a, pad), np.uint8)], axis=1)
        out[a:b] = (codes.reshape(b - a, -1, 4) * weights).sum(axis=2, dtype=np.uint8)
    return out
