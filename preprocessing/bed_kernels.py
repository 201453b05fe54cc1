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
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

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

# Rows per block: about 2 MiB of .bed bytes, so a block and its kernel state stay in cache.
_BLOCK_BYTES = 1 << 21

T = TypeVar("T")


class BedFile:
    """The genotype rows of a SNP-major .bed, read with ``os.preadv`` into reused buffers.

    Reading instead of mapping keeps the file's pages in the page cache but out of this
    process's resident memory, and ``preadv`` releases the GIL, so blocks are read on the
    worker threads. The file stays open (a rename of the path does not affect reads).
    shape: (n_snps, bytes per row).
    """

    def __init__(self, path: str | Path, n_snps: int, nb: int, offset: int = 3) -> None:
        self.path = Path(path)
        self.shape = (n_snps, nb)
        self.offset = offset
        self._fd: int | None = os.open(self.path, os.O_RDONLY)
        self._local = threading.local()

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as (stop - start, nb) uint8, in this thread's buffer (valid
        until the thread's next call)."""
        nb = self.shape[1]
        n = (stop - start) * nb
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < n:
            buf = self._local.buf = np.empty(max(n, _BLOCK_BYTES), dtype=np.uint8)
        view = buf[:n]
        done = 0
        while done < n:
            got = os.preadv(self._fd, [view[done:]], self.offset + start * nb + done)
            if got <= 0:
                raise OSError(f"{self.path}: unexpected end of file (truncated while reading?)")
            done += got
        return view.reshape(stop - start, nb)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("BedFile rows take a contiguous slice")
        return self.rows(start, stop).copy()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


# What the kernels read rows from.
Rows = np.ndarray | BedFile


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


def block_rows(nb: int) -> int:
    """Rows per block for rows of ``nb`` bytes."""
    return max(16, _BLOCK_BYTES // max(nb, 1))


def row_blocks(start: int, stop: int, nb: int) -> list[tuple[int, int]]:
    """Blocks (a, b) covering rows ``start:stop``."""
    size = block_rows(nb)
    return [(s, min(s + size, stop)) for s in range(start, stop, size)]


def read_rows(bed: Rows, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an array or a ``BedFile`` (C-contiguous (n, nb) uint8)."""
    if isinstance(bed, BedFile):
        return bed.rows(start, stop)
    return np.ascontiguousarray(bed[start:stop], dtype=np.uint8)


def map_ordered(fn: Callable[..., T], blocks: Sequence[tuple[int, int]], threads: int | None = None
                ) -> Iterator[T]:  # fmt: skip
    """``fn(a, b)`` for each block, on ``threads`` threads, yielded in block order with at most
    two blocks per thread in flight (so results are consumed as they come)."""
    threads = n_threads() if threads is None else threads
    if threads == 1 or len(blocks) <= 1:
        for a, b in blocks:
            yield fn(a, b)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[T]] = deque()
        for a, b in blocks:
            pending.append(pool.submit(fn, a, b))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class OrderedWriter:
    """Writes the outputs of numbered blocks one after the other into a file, each from the
    thread that made it.

    Block k's place is known once blocks 0..k-1 have given their sizes: ``write(k, data)``
    waits for that, hands the next offset on, then writes with ``os.pwrite`` (no GIL held),
    beside the other threads' work. Blocks must be started in order (``map_ordered`` submits
    them so), so the wait cannot deadlock; a failing block calls ``abort(k)`` so that no
    later one waits forever. The file is created (truncated) with ``header`` at offset 0."""

    def __init__(self, path: str | Path, n_blocks: int, header: bytes = b"") -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._offsets = [0] * (n_blocks + 1)
        self._ready = [threading.Event() for _ in range(n_blocks + 1)]
        self._failed_at: int | None = None
        self._pwrite(memoryview(header), 0)
        self._offsets[0] = len(header)
        self._ready[0].set()

    def write(self, k: int, data: memoryview) -> None:
        """Block k's bytes (a 1-D byte view) after those of blocks 0..k-1."""
        self._ready[k].wait()
        if self._failed_at is not None and k > self._failed_at:
            raise RuntimeError(f"block {self._failed_at} failed; block {k} was not written")
        offset = self._offsets[k]
        self._offsets[k + 1] = offset + data.nbytes
        self._ready[k + 1].set()
        self._pwrite(data, offset)

    def _pwrite(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < data.nbytes:
            done += os.pwrite(self._fd, data[done:], offset + done)

    def abort(self, k: int) -> None:
        """Block k failed: the blocks after it stop waiting (and raise); those before it
        still write in turn, so the first error in block order is block k's own."""
        self._failed_at = k if self._failed_at is None else min(self._failed_at, k)
        for event in self._ready[k + 1 :]:
            event.set()

    def __enter__(self) -> OrderedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)


def decode_rows(rows: np.ndarray, n_samples: int) -> np.ndarray:
    """Packed rows (n_rows, ceil(n_samples/4)) uint8 -> 2-bit codes (n_rows, n_samples) uint8."""
    rows = np.asarray(rows, dtype=np.uint8)
    return CODES_OF_BYTE[rows].reshape(rows.shape[0], -1)[:, :n_samples]


def count_genotypes(
    bed: Rows,
    n_samples: int,
    masks: list[np.ndarray],
    start: int = 0,
    stop: int | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Genotype counts of rows ``start:stop`` within each sample subset.

    bed: (n_snps, ceil(n_samples/4)) uint8 array or a ``BedFile``; masks: boolean
    (n_samples,) arrays. Returns (n_masks, 4, n_rows) int32 counts of
    [hom A1, het, hom A2, missing] (.bim A1 = column 5), one contiguous row per count.
    """
    stop = bed.shape[0] if stop is None else stop
    n_rows = stop - start
    out = np.zeros((len(masks), 4, n_rows), dtype=np.int32)
    if not (n_rows and masks):
        return out
    nb = bed.shape[1]
    sizes = np.array([int(np.count_nonzero(m)) for m in masks], dtype=np.int32)[:, None]
    fast = _ext is not None and len(masks) <= 16
    words = np.ascontiguousarray(np.stack([sample_mask_words(m) for m in masks])) if fast else None

    def run(a: int, b: int) -> None:
        rows = read_rows(bed, a, b)
        raw = np.zeros((len(masks), 3, b - a), dtype=np.uint32)
        if fast:
            _ext.count_masks(rows, nb, 0, b - a, words, len(masks), raw, b - a)
        else:
            _count_numpy(rows, n_samples, masks, raw)
        lo, hi, both = (raw[:, k].view(np.int32) for k in range(3))
        o = out[:, :, a - start : b - start]
        np.copyto(o[:, 2], both)
        np.subtract(hi, both, out=o[:, 1])
        np.subtract(lo, both, out=o[:, 3])
        o[:, 0] = sizes - lo - hi + both

    for _ in map_ordered(run, row_blocks(start, stop, nb), threads):
        pass
    return out


def _count_numpy(rows: np.ndarray, n_samples: int, masks: list[np.ndarray], raw: np.ndarray
                 ) -> None:  # fmt: skip
    sel = np.stack([np.asarray(m, dtype=bool) for m in masks]).astype(np.uint32)  # (K, n)
    for a in range(0, rows.shape[0], 4096):
        b = min(a + 4096, rows.shape[0])
        codes = decode_rows(rows[a:b], n_samples)
        lo = (codes & 1).astype(np.uint32)
        hi = (codes >> 1).astype(np.uint32)
        for k, x in enumerate((lo, hi, lo & hi)):
            raw[:, k, a:b] = sel @ x.T


def sample_missing_counts(
    bed: Rows,
    n_samples: int,
    mask: np.ndarray,
    start: int = 0,
    stop: int | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Missing calls per sample over rows ``start:stop``, counting only samples in ``mask``.

    Returns (n_samples,) int64.
    """
    stop = bed.shape[0] if stop is None else stop
    total = np.zeros(n_samples, dtype=np.int64)
    if stop <= start:
        return total
    nb = bed.shape[1]
    words = sample_mask_words(mask) if _ext is not None else None

    def run(a: int, b: int) -> np.ndarray:
        rows = read_rows(bed, a, b)
        if words is not None:
            acc = np.zeros(words.size * 32, dtype=np.uint32)
            _ext.sample_missing(rows, nb, 0, b - a, words, acc)
            return acc[:n_samples]
        return (decode_rows(rows, n_samples) == 1).sum(axis=0)

    for part in map_ordered(run, row_blocks(start, stop, nb), threads):
        total += part
    return total if words is not None else np.where(np.asarray(mask, dtype=bool), total, 0)


def extract_rows(
    bed: np.ndarray,
    n_samples: int,
    rows: np.ndarray,
    reverse: np.ndarray,
    keep_samples: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Selected rows repacked for the kept samples, A1/A2 swapped where ``reverse``.

    bed: an array (a memory map is fine); rows: (n_out,) int indices; reverse: (n_out,) bool;
    keep_samples: ascending sample indices, or None for all. Returns (n_out, ceil(n_keep/4))
    uint8 with zero padding bits.
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

        for _ in map_ordered(run, row_blocks(0, rows.size, nb), threads):
            pass
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
