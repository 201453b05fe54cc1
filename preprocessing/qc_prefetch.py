"""The first reads of a ``g2i-qc`` run, started before numpy is imported.

Importing numpy and the QC modules takes about 90 ms of one core; the two passes that need
only the compiled kernels and the standard library run meanwhile on a thread of their own
(the kernels release the GIL, and read the .bed themselves):

- the .bim's tokenisation (``_bed_kernels.parse_bim`` into preallocated buffers), which
  ``plink.read_bim`` then validates as if it had parsed the file itself;
- ``--mind``'s missing-call counts over every row, from the .fam's line count and the .bed's
  size, which ``qc.run_qc`` uses only when they describe the fileset it read (same sample
  and variant counts, no chrY).

Nothing here reports an error: a file that is missing or malformed leaves its result None,
and the reader that follows, with numpy, says what is wrong as it always does. This module
imports no numpy (``python -X importtime`` shows it).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

try:  # pragma: no cover - which branch runs depends on the build
    from preprocessing import _bed_kernels as _ext
except ImportError:  # pragma: no cover
    _ext = None

BED_HEADER = 3


class ParsedBim:
    """What ``_bed_kernels.parse_bim`` wrote: the buffers of its outputs and the line count
    (``n`` < 0: the line number, negated, of the first line without 6 fields)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.cap = _ext.count_byte(raw, 10) + 1
        cap = self.cap
        self.tok_start, self.tok_end = bytearray(cap * 24), bytearray(cap * 24)
        self.line_no, self.pos = bytearray(cap * 8), bytearray(cap * 8)
        self.flags, self.id_hash = bytearray(cap), bytearray(cap * 8)
        self.n = _ext.parse_bim(
            raw, self.tok_start, self.tok_end, self.line_no, self.pos, self.flags, self.id_hash
        )


class MissingCounts:
    """``--mind``'s counts over every row: ``counts`` (uint32 per sample, in a buffer of
    32 x words entries) for a fileset of ``n_samples`` x ``n_snps``."""

    def __init__(self, n_samples: int, n_snps: int, counts: bytearray) -> None:
        self.n_samples, self.n_snps, self.counts = n_samples, n_snps, counts


def fam_rows(path: Path) -> int:
    """Rows of a .fam: its non-blank lines (what ``read_fam`` reads when the file is valid)."""
    return sum(1 for line in path.read_bytes().splitlines() if line.split())


def all_samples_mask(n_samples: int) -> bytearray:
    """The kernels' sample mask selecting every sample: bit 2s of 64-bit little-endian words."""
    n_words = (n_samples + 31) // 32
    mask = bytearray(n_words * 8)
    full, rest = divmod(n_samples, 4)
    mask[:full] = b"\x55" * full
    if rest:
        mask[full] = (0x55 >> (2 * (4 - rest))) & 0x55
    return mask


def missing_counts(bed_path: Path, n_samples: int) -> MissingCounts:
    """Missing calls per sample over every row of a SNP-major .bed (one kernel call that reads
    the file block by block without the GIL)."""
    nb = (n_samples + 3) // 4
    n_snps, rest = divmod(bed_path.stat().st_size - BED_HEADER, nb) if nb else (0, 1)
    if rest or n_snps <= 0:
        raise ValueError("size left to read_plink to check")
    mask = all_samples_mask(n_samples)
    counts = bytearray(len(mask) // 8 * 32 * 4)
    fd = os.open(bed_path, os.O_RDONLY)
    try:
        err = _ext.sample_missing_file(fd, BED_HEADER, nb, n_snps, mask, counts)
    finally:
        os.close(fd)
    if err:
        raise OSError(err, "reading the .bed failed")
    return MissingCounts(n_samples, n_snps, counts)


class Prefetch:
    """The two passes on a thread of its own; ``bim()`` and ``missing()`` wait for it."""

    def __init__(
        self, prefix: str | Path, mind: bool, bim: bool = True, n_samples: int | None = None
    ) -> None:
        """``mind``: count --mind's missing calls; ``bim``: tokenise the .bim (False: the
        caller parses it, beside the counts); ``n_samples``: the .fam's rows, when already
        read (else counted here)."""
        self.prefix = Path(prefix)
        self._mind, self._parse_bim, self._n_samples = mind, bim, n_samples
        self._bim: ParsedBim | None = None
        self._missing: MissingCounts | None = None
        self._thread: threading.Thread | None = None
        self._bim_done = threading.Event()
        if _ext is None:
            self._bim_done.set()
        else:
            # one thread, the .bim first (read_plink needs it first): with the imports on
            # the main thread that keeps two cores busy, not three threads on two
            self._thread = threading.Thread(target=self._run, name="g2i-qc-prefetch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            if self._parse_bim:
                self._read_bim(self.prefix.with_name(self.prefix.name + ".bim"))
        finally:
            self._bim_done.set()
        if self._mind:
            self._count_missing(self.prefix)

    def _read_bim(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
            if len(raw) < 2**31 - 1:
                self._bim = ParsedBim(raw)
        except (OSError, ValueError):
            self._bim = None

    def _count_missing(self, prefix: Path) -> None:
        try:
            n = self._n_samples
            if n is None:
                n = fam_rows(prefix.with_name(prefix.name + ".fam"))
            self._missing = missing_counts(prefix.with_name(prefix.name + ".bed"), n)
        except (OSError, ValueError):
            self._missing = None

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def bim(self) -> ParsedBim | None:
        self._bim_done.wait()
        return self._bim

    def missing(self) -> MissingCounts | None:
        self.join()
        return self._missing
