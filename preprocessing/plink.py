"""Reading PLINK 1 binary filesets with validation, and writing them the way PLINK 1.9 does.

``read_plink(prefix)`` returns a ``PlinkFileset``: the .fam as columns, the .bim as a
vectorised table (tokenised with numpy, so a 620,000-line .bim parses in tens of
milliseconds), and the .bed as a read-only memory map of shape (n_snps, ceil(n_samples/4))
(SNP-major packed rows, see ``preprocessing.bed_kernels``). Every malformation raises
``GenotypeFormatError`` naming the file and, where it applies, the line.

The writers reproduce ``plink1.9 --make-bed`` output byte for byte: .bim tab-delimited with
numeric chromosome codes (X = 23, Y = 24, XY = 25, MT = 26), centimorgans printed with 8
significant digits, .fam space-delimited with sex 1/2/0 and phenotype 1/2/-9 (case/control)
or ``%g`` (quantitative).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preprocessing.bed_kernels import BedFile, Rows, _ext
from preprocessing.errors import GenotypeFormatError
from preprocessing.plink_io import BED_MAGIC
from preprocessing.qc_prefetch import ParsedBim

CHROM_X, CHROM_Y, CHROM_XY, CHROM_MT = 23, 24, 25, 26
_CHROM_ALIASES = {"X": CHROM_X, "Y": CHROM_Y, "XY": CHROM_XY, "M": CHROM_MT, "MT": CHROM_MT}
MISSING_PHENO = -9.0


def chrom_code(token: str) -> int | None:
    """PLINK chromosome code (0-26) of a .bim token ('1', 'chr1', 'X', '23', 'MT'...), or None."""
    t = token[3:] if token[:3].lower() == "chr" else token
    if t.isdigit():
        v = int(t)
        return v if 0 <= v <= 26 else None
    return _CHROM_ALIASES.get(t.upper())


@dataclass
class Fam:
    """The .fam columns. sex: (n,) int8 1 male, 2 female, 0 unknown; phenotype: (n,) float64
    with NaN for missing; ``case_control``: PLINK reads the column as 1 control / 2 case."""

    fid: list[str]
    iid: list[str]
    father: list[str]
    mother: list[str]
    sex: np.ndarray
    phenotype: np.ndarray
    case_control: bool

    @property
    def n(self) -> int:
        return len(self.iid)

    @property
    def founder(self) -> np.ndarray:
        """(n,) bool: both parent IDs are '0' (PLINK 1.9's definition)."""
        return np.array(
            [f == "0" and m == "0" for f, m in zip(self.father, self.mother, strict=True)], bool
        )

    @property
    def male(self) -> np.ndarray:
        return self.sex == 1

    @property
    def control(self) -> np.ndarray:
        return self.case_control & (self.phenotype == 1)

    @property
    def case(self) -> np.ndarray:
        return self.case_control & (self.phenotype == 2)


@dataclass
class Bim:
    """The .bim as arrays over the raw bytes. ``tok_start``/``tok_end``: (n, 6) byte offsets
    of the six tokens of each variant line (int32 below 2 GiB, else int64); ``line_no``: (n,)
    1-based file line numbers."""

    raw: bytes
    tok_start: np.ndarray
    tok_end: np.ndarray
    line_no: np.ndarray
    chrom: np.ndarray  # (n,) int16 PLINK codes
    pos: np.ndarray  # (n,) int64
    cm_text: list[bytes] = field(default_factory=list)  # cM texts to write; [] = all '0'
    pos_canonical: bool | None = None  # every position token written as PLINK writes it

    @property
    def n(self) -> int:
        return int(self.chrom.size)

    def column(self, k: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Token column k (0 chrom, 1 ID, 4 A1, 5 A2...) as a fixed-width bytes array (n,)."""
        starts = self.tok_start[:, k] if rows is None else self.tok_start[rows, k]
        ends = self.tok_end[:, k] if rows is None else self.tok_end[rows, k]
        return _gather_tokens(self.raw, starts, ends)

    def strings(self, k: int, rows: np.ndarray | None = None) -> list[str]:
        """Token column k as str (tokens hold no whitespace: one gather of the tokens, each
        followed by a newline of the file, then one decode and split)."""
        starts = self.tok_start[:, k] if rows is None else self.tok_start[rows, k]
        if not starts.size:
            return []
        ends = self.tok_end[:, k] if rows is None else self.tok_end[rows, k]
        newline = self.raw.find(b"\n")
        if newline < 0:  # one line without a line end
            tokens = _gather_tokens(self.raw, starts, ends).tolist()
            return b"\n".join(tokens).decode(errors="replace").split("\n")
        pieces = np.empty((starts.size, 2), dtype=np.int64)
        lengths = np.ones((starts.size, 2), dtype=np.int64)
        pieces[:, 0], pieces[:, 1] = starts, newline
        lengths[:, 0] = ends - starts
        src = np.frombuffer(self.raw, dtype=np.uint8)
        text = _gather_pieces(src, pieces.ravel(), lengths.ravel()).tobytes()
        return text.decode(errors="replace").split("\n")[:-1]

    @property
    def snp_ids(self) -> np.ndarray:
        return self.column(1)


@dataclass
class PlinkFileset:
    """A validated fileset: ``bed`` is (n_snps, ceil(n_samples/4)) uint8, memory-mapped;
    ``bed_file`` reads the same rows into buffers (what whole-file passes use, so that the
    file's pages are not mapped into the process)."""

    prefix: Path
    fam: Fam
    bim: Bim
    bed: np.ndarray
    bed_file: BedFile | None = None

    @property
    def rows(self) -> Rows:
        """Where the kernels read genotype rows from: ``bed_file``, else ``bed``."""
        return self.bed if self.bed_file is None else self.bed_file

    @property
    def n_samples(self) -> int:
        return self.fam.n

    @property
    def n_snps(self) -> int:
        return self.bim.n


def _gather_tokens(raw: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lengths = ends - starts
    width = max(int(lengths.max()) if lengths.size else 1, 1)
    buf = np.frombuffer(raw, dtype=np.uint8)
    idx = starts[:, None] + np.arange(width)
    np.minimum(idx, len(raw) - 1, out=idx)
    out = buf[idx]
    out[np.arange(width) >= lengths[:, None]] = 0
    return out.view(f"S{width}").ravel()


def _tokenize(raw: bytes, path: Path, n_fields: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whitespace tokens of every non-blank line: starts, ends (n_lines, n_fields), line_no."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size == 0:
        z = np.zeros((0, n_fields), dtype=np.int64)
        return z, z.copy(), np.zeros(0, dtype=np.int64)
    newline = buf == 10
    sep = newline | (buf == 32) | (buf == 9) | (buf == 13)
    prev_sep = np.empty_like(sep)
    prev_sep[0] = True
    prev_sep[1:] = sep[:-1]
    next_sep = np.empty_like(sep)
    next_sep[-1] = True
    next_sep[:-1] = sep[1:]
    starts = np.flatnonzero(~sep & prev_sep)
    ends = np.flatnonzero(~sep & next_sep) + 1
    newline_at = np.flatnonzero(newline)
    # tokens before each line end -> tokens per line (0-based lines; a last line may lack LF)
    before = np.searchsorted(starts, np.append(newline_at, buf.size))
    counts = np.diff(before, prepend=0)
    bad = np.flatnonzero((counts != 0) & (counts != n_fields))
    if bad.size:
        ln = int(bad[0])
        raise GenotypeFormatError(
            f"expected {n_fields} whitespace-separated fields, found {int(counts[ln])}; "
            "fix or remove this line",
            path,
            ln + 1,
        )
    line_no = np.flatnonzero(counts) + 1
    return starts.reshape(-1, n_fields), ends.reshape(-1, n_fields), line_no


def _canonical_cm(value: float) -> bytes:
    return b"0" if value == 0 else (b"%.8g" % value)


def read_bim(path: str | Path, parsed: ParsedBim | None = None) -> Bim:
    """Parse and validate a .bim file (chromosome codes, integer positions, numeric cM).

    ``parsed``: the file already tokenised by the compiled kernel (``qc_prefetch``); it is
    validated here as the file itself would be."""
    path = Path(path)
    raw = parsed.raw if parsed is not None else _read_bytes(path)
    id_hash = None
    if _ext is not None and len(raw) < 2**31 - 1:
        starts, ends, line_no, pos, flags, id_hash = _parse_bim_fast(raw, path, parsed)
    else:
        starts, ends, line_no = _tokenize(raw, path, 6)
        pos = flags = None
    n = starts.shape[0]
    if n == 0:
        raise GenotypeFormatError(
            "no variants (the .bim is empty); point --bfile at a fileset that has variants",
            path,
        )
    bim = Bim(raw, starts, ends, line_no, np.zeros(n, np.int16), np.zeros(n, np.int64))
    bim.chrom = _chrom_codes(bim, path, None if flags is None else np.flatnonzero(~flags & 4))
    if pos is None or (pos < 0).any():
        pos = _parse_ints(bim.column(3), line_no, path, "base-pair position")
    bim.pos = pos
    bim.pos_canonical = None if flags is None else bool((flags & 2).all())
    if flags is None or not (flags & 1).all():
        cm_tok = bim.column(2)
        uniq_cm, inv_cm = np.unique(cm_tok, return_inverse=True)
        cm_out = []
        for i, tok in enumerate(uniq_cm.tolist()):
            try:
                cm_out.append(_canonical_cm(float(tok)))
            except ValueError:
                ln = int(line_no[np.flatnonzero(inv_cm == i)[0]])
                raise GenotypeFormatError(
                    f"centimorgan field {tok.decode(errors='replace')!r} is not a number", path, ln
                ) from None
        if uniq_cm.size > 1 or cm_out != [b"0"]:
            bim.cm_text = [cm_out[i] for i in inv_cm.tolist()]
    if id_hash is None:
        _check_unique(bim.snp_ids, line_no, path, "SNP ID")
    elif _ext.any_equal(id_hash):
        # equal hashes are candidates; confirm on the IDs themselves
        order = np.argsort(id_hash, kind="stable")
        same = np.flatnonzero(id_hash[order][1:] == id_hash[order][:-1])
        if same.size:
            cand = np.unique(np.concatenate([order[same], order[same + 1]]))
            _check_unique(bim.column(1, cand), line_no[cand], path, "SNP ID")
    return bim


def _parse_bim_fast(
    raw: bytes, path: Path, parsed: ParsedBim | None = None
) -> tuple[np.ndarray, ...]:
    if parsed is not None:
        cap, n = parsed.cap, parsed.n
        starts = np.frombuffer(parsed.tok_start, np.int32).reshape(cap, 6)
        ends = np.frombuffer(parsed.tok_end, np.int32).reshape(cap, 6)
        line_no = np.frombuffer(parsed.line_no, np.int64)
        pos = np.frombuffer(parsed.pos, np.int64)
        flags = np.frombuffer(parsed.flags, np.uint8)
        id_hash = np.frombuffer(parsed.id_hash, np.uint64)
    else:
        cap = raw.count(b"\n") + 1
        starts, ends = np.empty((cap, 6), np.int32), np.empty((cap, 6), np.int32)
        line_no, pos = np.empty(cap, np.int64), np.empty(cap, np.int64)
        flags, id_hash = np.empty(cap, np.uint8), np.empty(cap, np.uint64)
        n = _ext.parse_bim(raw, starts, ends, line_no, pos, flags, id_hash)
    if n < 0:
        text = raw.split(b"\n")[-n - 1]
        raise GenotypeFormatError(
            f"expected 6 whitespace-separated fields, found {len(text.split())}; fix or remove "
            "this line",
            path,
            -n,
        )
    return starts[:n], ends[:n], line_no[:n], pos[:n], flags[:n], id_hash[:n]


def _chrom_codes(bim: Bim, path: Path, run_start: np.ndarray | None = None) -> np.ndarray:
    """Chromosome codes per variant; tokens change rarely, so decode each run once.

    run_start: the variants whose token differs from the previous one (None: find them)."""
    if run_start is None:
        tok = bim.column(0)
        run_start = np.concatenate([[0], np.flatnonzero(tok[1:] != tok[:-1]) + 1])
        run_tok = tok[run_start]
    else:
        run_tok = bim.column(0, run_start)
    codes = {}
    for t in set(run_tok.tolist()):
        code = chrom_code(t.decode(errors="replace"))
        if code is None:
            ln = int(bim.line_no[run_start[np.flatnonzero(run_tok == t)[0]]])
            raise GenotypeFormatError(
                f"unknown chromosome code {t.decode(errors='replace')!r} (expected 1-26, X, Y, XY, "
                "MT, or 0)",
                path,
                ln,
            )
        codes[t] = code
    run_codes = np.array([codes[t] for t in run_tok.tolist()], dtype=np.int16)
    return np.repeat(run_codes, np.diff(np.append(run_start, bim.n)))


def _parse_ints(tokens: np.ndarray, line_no: np.ndarray, path: Path, what: str) -> np.ndarray:
    try:
        values = tokens.astype(np.int64)
    except ValueError:
        values = None
    if values is not None and (values >= 0).all():
        return values
    for i, tok in enumerate(tokens.tolist()):
        try:
            ok = int(tok) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise GenotypeFormatError(
                f"{what} {tok.decode(errors='replace')!r} is not a non-negative integer",
                path,
                int(line_no[i]),
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _check_unique(ids: np.ndarray, line_no: np.ndarray, path: Path, what: str) -> None:
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        first, second = sorted(order[dup[0] : dup[0] + 2].tolist())
        name = ids[first]
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        raise GenotypeFormatError(
            f"duplicated {what} {name!r} (also on line {int(line_no[first])}); IDs must be "
            "unique: rename or remove one of them",
            path,
            int(line_no[second]),
        )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise GenotypeFormatError("file not found; check the --bfile prefix", path) from None
    except OSError as exc:
        raise GenotypeFormatError(f"cannot be read ({exc.strerror})", path) from None


def read_fam(path: str | Path) -> Fam:
    """Parse and validate a .fam file (6 columns, unique FID/IID pairs, IID not '0')."""
    path = Path(path)
    try:
        text = _read_bytes(path).decode()
    except UnicodeDecodeError as exc:
        raise GenotypeFormatError(f"not text ({exc.reason})", path) from None
    rows: list[list[str]] = []
    line_nos: list[int] = []
    for ln, line in enumerate(text.splitlines(), start=1):
        tok = line.split()
        if not tok:
            continue
        if len(tok) < 6:
            raise GenotypeFormatError(
                f"expected 6 fields (FID IID father mother sex phenotype), found {len(tok)}",
                path,
                ln,
            )
        if tok[1] == "0":
            raise GenotypeFormatError("IID '0' is not allowed (PLINK reserves it)", path, ln)
        rows.append(tok[:6])
        line_nos.append(ln)
    if not rows:
        raise GenotypeFormatError("no samples (empty .fam)", path)
    fid, iid, father, mother, sex_tok, pheno_tok = (list(c) for c in zip(*rows, strict=True))
    keys = np.array([f"{a}\t{b}" for a, b in zip(fid, iid, strict=True)])
    _check_unique(keys, np.array(line_nos), path, "sample (FID, IID)")
    sex = np.array([1 if s == "1" else 2 if s == "2" else 0 for s in sex_tok], dtype=np.int8)
    values = np.array([_scan_double(t) for t in pheno_tok], dtype=np.float64)
    # PLINK reads the column as case/control unless some value other than -9, 0, 1, 2
    # (written as that single character) or a non-number is present.
    case_control = all(
        np.isnan(v) or v == MISSING_PHENO or t in ("0", "1", "2")
        for t, v in zip(pheno_tok, values, strict=True)
    )
    if case_control:
        phenotype = np.where(np.isin(values, (1.0, 2.0)), values, np.nan)
    else:
        phenotype = np.where(values == MISSING_PHENO, np.nan, values)
    return Fam(fid, iid, father, mother, sex, phenotype, case_control)


def _scan_double(token: str) -> float:
    try:
        v = float(token)
    except ValueError:
        return float("nan")
    return v if np.isfinite(v) else float("nan")


def open_bed(path: str | Path, n_samples: int, n_snps: int) -> np.ndarray:
    """Validate a .bed (magic bytes, SNP-major mode, exact size) and memory-map its rows.

    Returns (n_snps, ceil(n_samples/4)) uint8, read-only.
    """
    path = Path(path)
    nb = (n_samples + 3) // 4
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(3)
    except FileNotFoundError:
        raise GenotypeFormatError("file not found; check the --bfile prefix", path) from None
    if head[:2] != BED_MAGIC[:2]:
        raise GenotypeFormatError(
            f"not a PLINK 1 .bed file (first bytes {head[:2].hex()}, expected 6c1b)", path
        )
    if len(head) < 3 or head[2] != 1:
        raise GenotypeFormatError(
            "individual-major .bed (mode byte 0x00) is not supported; rewrite it SNP-major "
            "with plink1.9 --bfile PREFIX --make-bed",
            path,
        )
    expected = 3 + nb * n_snps
    if size != expected:
        raise GenotypeFormatError(
            f"size {size} bytes does not match the .bim/.fam: {n_snps} SNPs x {nb} bytes "
            f"({n_samples} samples) + 3 = {expected}; the .bed is truncated or belongs to "
            "another .bim/.fam",
            path,
        )
    if nb * n_snps == 0:
        return np.zeros((n_snps, nb), dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=3, shape=(n_snps, nb))


def read_plink(
    prefix: str | Path, fam: Fam | None = None, parsed_bim: ParsedBim | None = None
) -> PlinkFileset:
    """Read and validate ``prefix.bed/.bim/.fam`` (``fam``: the .fam, already read;
    ``parsed_bim``: the .bim, already tokenised, see ``read_bim``)."""
    prefix = Path(prefix)
    fam = fam if fam is not None else read_fam(prefix.with_name(prefix.name + ".fam"))
    bim = read_bim(prefix.with_name(prefix.name + ".bim"), parsed_bim)
    bed_path = prefix.with_name(prefix.name + ".bed")
    bed = open_bed(bed_path, fam.n, bim.n)
    return PlinkFileset(prefix, fam, bim, bed, BedFile(bed_path, *bed.shape) if bed.size else None)


def bim_lines_native(bim: Bim) -> bool:
    """Whether the compiled kernel can write ``bim``'s output lines (every cM written as "0",
    every position token as PLINK writes it)."""
    return (
        _ext is not None
        and not bim.cm_text
        and bool(bim.pos_canonical)
        and bim.tok_start.dtype == np.int32
    )


def bim_block_lines(bim: Bim, rows: np.ndarray, swap_alleles: np.ndarray) -> np.ndarray:
    """The output .bim lines of ``rows`` as bytes (uint8), by the compiled kernel (only when
    ``bim_lines_native``): what ``write_bim_subset`` writes for them."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if not rows.size:
        return np.zeros(0, dtype=np.uint8)
    # An output line is at most 2 bytes longer than its input line (a 2-digit chromosome code
    # for a 1-byte token; every other field is copied or shorter), and the rows' input lines
    # lie within the bytes from the first one's start to the last one's end.
    lo, hi = int(rows.min()), int(rows.max())
    span = int(bim.tok_end[hi, 5]) - int(bim.tok_start[lo, 0])
    out = np.empty(span + 2 * rows.size + 16, dtype=np.uint8)
    swap = np.asarray(swap_alleles, dtype=np.uint8)
    n = _ext.bim_lines(bim.raw, bim.tok_start, bim.tok_end, rows, swap, bim.chrom, out)
    return out[:n]


def write_bim_subset(
    path: str | Path, bim: Bim, rows: np.ndarray, swap_alleles: np.ndarray
) -> None:
    """Write the .bim lines of ``rows`` (in that order) as PLINK does, swapping A1/A2 where
    ``swap_alleles``. rows: (n_out,) int; swap_alleles: (n_out,) bool.

    Each output line is 12 pieces (chrom, TAB, ID, TAB, cM, TAB, pos, TAB, A1, TAB, A2, LF),
    gathered from the input bytes plus a small buffer of rewritten texts, in blocks.
    """
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    swap = np.asarray(swap_alleles, dtype=bool)
    if bim_lines_native(bim):
        Path(path).write_bytes(memoryview(bim_block_lines(bim, rows, swap)))
        return
    base = len(bim.raw)
    extra = bytearray(b"\t\n0")
    chrom_at = np.zeros(27, np.int64)
    chrom_len = np.zeros(27, np.int64)
    for code in range(27):
        text = str(code).encode()
        chrom_at[code], chrom_len[code] = base + len(extra), len(text)
        extra += text
    src = np.frombuffer(bim.raw + bytes(extra), dtype=np.uint8)
    with open(path, "wb") as fh:
        for a in range(0, rows.size, 200_000):
            r, sw = rows[a : a + 200_000], swap[a : a + 200_000]
            m = r.size
            starts = np.empty((m, 12), np.int64)
            lens = np.ones((m, 12), np.int64)
            starts[:, 1::2] = base  # tabs
            starts[:, 11] = base + 1  # newline
            starts[:, 4] = base + 2  # cM "0"
            c = bim.chrom[r]
            starts[:, 0], lens[:, 0] = chrom_at[c], chrom_len[c]
            ts, te = bim.tok_start[r], bim.tok_end[r]
            for piece, k in ((2, 1), (6, 3)):
                starts[:, piece], lens[:, piece] = ts[:, k], te[:, k] - ts[:, k]
            i = np.arange(m)
            for piece, k in ((8, np.where(sw, 5, 4)), (10, np.where(sw, 4, 5))):
                starts[:, piece], lens[:, piece] = ts[i, k], te[i, k] - ts[i, k]
            block_src = src
            pos_text = _pos_pieces(bim, r)
            if bim.cm_text or pos_text:
                # rewritten cM / position texts go after the shared buffer
                add = bytearray()
                for j, row in enumerate(r.tolist()):
                    for piece, text in ((4, bim.cm_text[row] if bim.cm_text else None),
                                        (6, pos_text[j] if pos_text else None)):  # fmt: skip
                        if text is not None:
                            starts[j, piece], lens[j, piece] = src.size + len(add), len(text)
                            add += text
                block_src = np.concatenate([src, np.frombuffer(bytes(add), np.uint8)])
            fh.write(_gather_pieces(block_src, starts.ravel(), lens.ravel()).tobytes())


def _pos_pieces(bim: Bim, rows: np.ndarray) -> list[bytes] | None:
    """Canonical position texts where some input token is not canonical (leading zeros,
    '+'), else None (the input tokens are copied)."""
    ts, te = bim.tok_start[rows, 3], bim.tok_end[rows, 3]
    buf = np.frombuffer(bim.raw, dtype=np.uint8)
    first = buf[ts]
    noncanon = ((first == ord("0")) & (te - ts > 1)) | (first == ord("+"))
    if not noncanon.any():
        return None
    return [str(int(p)).encode() for p in bim.pos[rows].tolist()]


def _gather_pieces(src: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate src[starts[i] : starts[i] + lengths[i]] for all i, vectorised."""
    total = int(lengths.sum())
    if _ext is not None:
        out = np.empty(total, dtype=np.uint8)
        _ext.gather_pieces(src, np.ascontiguousarray(starts), np.ascontiguousarray(lengths), out)
        return out
    offsets = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, lengths)
    return src[idx]


def write_fam_subset(path: str | Path, fam: Fam, keep: np.ndarray) -> None:
    """Write the .fam lines of the kept samples (bool (n,) or indices) as PLINK does."""
    idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
    lines = []
    for i in idx.tolist():
        v = fam.phenotype[i]
        if np.isnan(v):
            pheno = "-9"
        elif fam.case_control:
            pheno = "2" if v == 2 else "1"
        else:
            pheno = f"{v:g}"
        lines.append(
            f"{fam.fid[i]} {fam.iid[i]} {fam.father[i]} {fam.mother[i]} {fam.sex[i]} {pheno}\n"
        )
    Path(path).write_text("".join(lines))


def write_bed_rows(path: str | Path, blocks: Iterable[np.ndarray]) -> None:
    """Write a SNP-major .bed from blocks of packed rows (n_rows, ceil(n_samples/4)) uint8."""
    with open(path, "wb") as fh:
        fh.write(BED_MAGIC)
        for rows in blocks:
            if rows.size:
                fh.write(memoryview(np.ascontiguousarray(rows, dtype=np.uint8)).cast("B"))
