"""PLINK 1.9-exact genotype QC: ``--mind``, then ``--geno``, ``--hwe``, ``--maf``, ``--make-bed``.

Statistics are pure functions over genotype counts (``GroupCounts``), so the local pipeline
(``run_qc``) and the federated one (``preprocessing.federated_qc``, counts summed over sites)
share every rule. PLINK 1.9 semantics reproduced here (checked against ``plink1.9``):

- ``--mind`` runs first, over all variants; chrY calls count for males only (females are
  judged over the non-Y variants). A sample is removed when its missing count exceeds
  ``int(mind * n_variants * (1 + 2^-44))``.
- Then, on the remaining samples, a variant's call rate is taken over all of them (chrY: over
  males; 0 if there are none) and it fails ``--geno`` when the rate is below
  ``(1 - geno)(1 - 2^-44)``. ``--hwe`` then tests the variants still in, ``--maf`` the ones
  left after that; a variant failing several filters is counted under the first.
- Allele frequencies use founders only (both parents '0'); chrX males and chrY count one
  allele each (heterozygous haploid calls are left out of frequencies but count as called).
- ``--hwe`` uses founders, and only the controls among them when the phenotype is
  case/control with at least one remaining control (``include_nonctrl`` turns that off);
  chrX tests non-male founders; chrY and chrMT are not tested. A variant fails when
  p < hwe (1 - 2^-44). MAF fails when below ``maf (1 - 2^-44)``.
- Output: A1 becomes the minor allele (founder frequency; ties keep the order) unless
  ``keep_allele_order``; variants sorted by (chromosome code, position, input order).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from preprocessing.bed_kernels import (
    OrderedWriter,
    _ext,
    count_genotypes,
    extract_rows,
    map_ordered,
    read_rows,
    row_blocks,
    sample_mask_words,
    sample_missing_counts,
)
from preprocessing.errors import G2IError, GenotypeFormatError
from preprocessing.hwe import PLINK_SMALL_EPSILON, hwe_exact_p_array, hwe_fails
from preprocessing.plink import (
    CHROM_MT,
    CHROM_X,
    CHROM_Y,
    Bim,
    PlinkFileset,
    bim_block_lines,
    bim_lines_native,
    read_fam,
    read_plink,
    write_bed_rows,
    write_bim_subset,
    write_fam_subset,
)
from preprocessing.plink_io import BED_MAGIC
from preprocessing.qc_prefetch import MissingCounts, Prefetch

if TYPE_CHECKING:  # the Hydra schema; importing it at run time costs g2i-qc OmegaConf
    from conf.schema import QCConfig

EPS = PLINK_SMALL_EPSILON

# GroupCounts arrays are (6 groups, 4 genotypes, n_snps) int: one contiguous row per count.
# Sample groups (axis 0). Male groups are filled on chrX and chrY only.
ALL, FOUNDERS, FOUNDER_CONTROLS, MALES, MALE_FOUNDERS, MALE_FOUNDER_CONTROLS = range(6)
N_GROUPS = 6
# Genotypes (axis 1), in .bim A1 terms.
HOM_A1, HET, HOM_A2, MISSING = range(4)

KEPT, FAILED_GENO, FAILED_HWE, FAILED_MAF = 0, 1, 2, 3
FILTER_NAMES = {FAILED_GENO: "geno", FAILED_HWE: "hwe", FAILED_MAF: "maf"}
FILTERS = tuple(FILTER_NAMES)


class QCError(G2IError):
    """QC cannot produce an output (PLINK stops in the same cases: nothing passes)."""


@dataclass(frozen=True)
class QCThresholds:
    """The thresholds QC reads, with the fields of ``conf.schema.QCConfig`` (the Hydra schema,
    accepted wherever this is: QC reads attributes only). ``g2i-qc`` builds this one, so that
    it starts without importing Hydra/OmegaConf."""

    mind: float = 0.05
    geno: float = 0.05
    maf: float = 0.01
    hwe: float = 1e-5
    hwe_midp: bool = False
    hwe_include_nonctrl: bool = False


def qc_options(config: QCConfig | QCThresholds) -> dict:
    """The thresholds of a config as a plain dict (for reports)."""
    return {f.name: getattr(config, f.name) for f in fields(QCThresholds)}


# ----------------------------------------------------------------------------- statistics


def mind_failures(
    missing: np.ndarray, male: np.ndarray, n_variants: int, n_variants_y: int, mind: float
) -> np.ndarray:
    """``--mind``: samples whose missing calls exceed PLINK's integer threshold.

    missing: (n_samples,) missing calls (chrY counted for males only); male: (n_samples,)
    bool. Returns (n_samples,) bool, True = remove.
    """
    if mind >= 1.0:
        return np.zeros(len(missing), dtype=bool)
    thr_male = int(mind * n_variants * (1 + EPS))
    thr_other = int(mind * (n_variants - n_variants_y) * (1 + EPS))
    return np.asarray(missing) > np.where(male, thr_male, thr_other)


def call_rate(counts: np.ndarray, chrom: np.ndarray) -> np.ndarray:
    """Call rate per variant over the remaining samples (chrY: males), as PLINK computes it.

    counts: (6, 4, n_snps) GroupCounts; chrom: (n_snps,) codes. Returns (n_snps,) float64.
    """
    group = counts[ALL]
    if (chrom == CHROM_Y).any():
        group = np.where(chrom == CHROM_Y, counts[MALES], counts[ALL])
    called = (group[HOM_A1] + group[HET] + group[HOM_A2]).astype(np.float64)
    size = called + group[MISSING]
    # PLINK multiplies by the reciprocal of the sample count; keep its rounding.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(size > 0, called * (1.0 / size), 0.0)


def a2_frequency(counts: np.ndarray, chrom: np.ndarray) -> np.ndarray:
    """Founder frequency of the .bim A2 allele (column 6) per variant; 0.5 with no calls.

    Diploid chromosomes count 2 alleles per founder; chrX males and chrY count one
    (heterozygous haploid calls left out). counts: (6, 4, n_snps). Returns (n_snps,) float64.
    """
    dip = counts[FOUNDERS, :3].astype(np.float64)
    hap = np.zeros((2, dip.shape[1]))
    haploid = (chrom == CHROM_X) | (chrom == CHROM_Y)
    if haploid.any():
        males = counts[MALE_FOUNDERS, :3].astype(np.float64)
        dip[:, haploid] -= males[:, haploid]
        dip[:, chrom == CHROM_Y] = 0.0
        hap[0, haploid] = males[HOM_A1, haploid]
        hap[1, haploid] = males[HOM_A2, haploid]
    den = 2.0 * (dip[HOM_A1] + dip[HET] + dip[HOM_A2]) + hap[0] + hap[1]
    num = 2.0 * dip[HOM_A2] + dip[HET] + hap[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, 0.5)


def minor_allele_frequency(a2_freq: np.ndarray) -> np.ndarray:
    """MAF from the A2 frequency: min(f, 1 - f)."""
    return np.minimum(a2_freq, 1.0 - a2_freq)


def hwe_counts(
    counts: np.ndarray, chrom: np.ndarray, controls_only: bool, rows: np.ndarray | None = None
) -> np.ndarray:
    """Genotype counts the HWE test uses: (3, n_rows) int64 [het, hom A1, hom A2] of the
    variants ``rows`` (default all).

    Founders (controls among them when ``controls_only``); chrX non-male founders only.
    """
    g, gm = (
        (FOUNDER_CONTROLS, MALE_FOUNDER_CONTROLS) if controls_only else (FOUNDERS, MALE_FOUNDERS)
    )
    rows = np.arange(chrom.size) if rows is None else rows
    c = np.stack([counts[g, k].take(rows) for k in (HET, HOM_A1, HOM_A2)]).astype(np.int64)
    x_rows = np.flatnonzero(chrom.take(rows) == CHROM_X)
    if x_rows.size:
        c[:, x_rows] -= np.stack([counts[gm, k].take(rows[x_rows]) for k in (HET, HOM_A1, HOM_A2)])
    return c


def hwe_tested(chrom: np.ndarray) -> np.ndarray:
    """PLINK 1.9 skips chrY and chrMT in ``--hwe``."""
    return (chrom != CHROM_Y) & (chrom != CHROM_MT)


def variant_filters(
    counts: np.ndarray, chrom: np.ndarray, config: QCConfig | QCThresholds, controls_only: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``--geno``, ``--hwe`` and ``--maf`` in PLINK's order.

    counts: (6, 4, n_snps) over the samples left after ``--mind``. Returns (status, a2_freq):
    status (n_snps,) int8 with KEPT / FAILED_GENO / FAILED_HWE / FAILED_MAF (first filter
    failed), a2_freq (n_snps,) founder A2 frequency.

    One pass of the compiled kernel (``_bed_kernels.variant_filters``, without the GIL, so the
    blocks of ``filter_variants`` overlap); ``variant_filters_numpy`` without the extension.
    Both give the same arrays bit for bit (tests/preprocessing/test_qc.py).
    """
    if _ext is None or counts.shape[0] != N_GROUPS or (counts.size and counts.max() >= 2**31):
        return variant_filters_numpy(counts, chrom, config, controls_only)
    n = chrom.size
    status, a2 = np.empty(n, dtype=np.int8), np.empty(n, dtype=np.float64)
    flags = (
        (config.geno < 1.0)
        | (config.hwe > 0.0) << 1
        | (config.maf > 0.0) << 2
        | bool(config.hwe_midp) << 3
        | bool(controls_only) << 4
    )
    _ext.variant_filters(
        np.ascontiguousarray(counts, dtype=np.int32),
        np.ascontiguousarray(chrom, dtype=np.int16),
        int(flags),
        (1.0 - config.geno) * (1 - EPS),
        float(config.hwe) * (1 - EPS),
        config.maf * (1 - EPS),
        status,
        a2,
    )
    return status, a2


def variant_filters_numpy(
    counts: np.ndarray, chrom: np.ndarray, config: QCConfig | QCThresholds, controls_only: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``variant_filters`` in numpy: the rules as array expressions (the reference the kernel
    is tested against, and the path without the compiled extension)."""
    status = np.zeros(len(chrom), dtype=np.int8)
    if config.geno < 1.0:
        status[call_rate(counts, chrom) < (1.0 - config.geno) * (1 - EPS)] = FAILED_GENO
    if config.hwe > 0.0:
        cand = np.flatnonzero((status == KEPT) & hwe_tested(chrom))
        h = hwe_counts(counts, chrom, controls_only, cand)
        fails = hwe_fails(h[0], h[1], h[2], config.hwe, config.hwe_midp)
        status[cand[fails]] = FAILED_HWE
    a2 = a2_frequency(counts, chrom)
    if config.maf > 0.0:
        status[(status == KEPT) & (minor_allele_frequency(a2) < config.maf * (1 - EPS))] = (
            FAILED_MAF
        )
    return status, a2


def sorted_order(chrom: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """PLINK's --make-bed variant order: by chromosome code, position, then input order."""
    return np.lexsort((np.arange(chrom.size), pos, chrom))


def chromosome_runs(chrom: np.ndarray, path: Path | None = None) -> list[tuple[int, int, int]]:
    """Contiguous runs (code, start, stop); a chromosome split over runs is an error."""
    if chrom.size == 0:
        return []
    cut = np.flatnonzero(chrom[1:] != chrom[:-1]) + 1
    bounds = np.concatenate([[0], cut, [chrom.size]])
    runs = [(int(chrom[a]), int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    codes = [r[0] for r in runs]
    if len(set(codes)) != len(codes):
        dup = next(c for c in codes if codes.count(c) > 1)
        raise GenotypeFormatError(
            f"chromosome {dup} is split into several blocks; sort the fileset first "
            "(plink1.9 --bfile PREFIX --make-bed --out SORTED)",
            path,
        )
    return runs


# ----------------------------------------------------------------------------- counting


@dataclass
class SampleGroups:
    """Boolean (n_samples,) masks of the samples that count for each statistic."""

    remaining: np.ndarray
    founder: np.ndarray
    control: np.ndarray
    male: np.ndarray
    controls_only: bool  # HWE on founder controls (else on all founders)

    def masks(self) -> list[np.ndarray]:
        """The 6 groups of GroupCounts, in order."""
        r, f, m = self.remaining, self.remaining & self.founder, self.male & self.remaining
        fc = f & self.control if self.controls_only else f
        return [r, f, fc, m, m & f, m & fc]


def sample_groups(
    fileset: PlinkFileset, remaining: np.ndarray, include_nonctrl: bool
) -> SampleGroups:
    """Groups after ``--mind``; HWE on controls when a case/control phenotype with remaining
    controls exists and ``include_nonctrl`` is off."""
    fam = fileset.fam
    n_controls = int(np.count_nonzero(fam.control & remaining))
    controls_only = fam.case_control and n_controls > 0 and not include_nonctrl
    return SampleGroups(remaining, fam.founder, fam.control, fam.male, controls_only)


def ploidy_segments(fileset: PlinkFileset) -> list[tuple[int, int, int]]:
    """Row ranges (kind, start, stop) with kind CHROM_X, CHROM_Y or 0 (diploid), merging
    neighbouring chromosomes of the same kind so each kernel call covers many rows."""
    segments: list[tuple[int, int, int]] = []
    for code, a, b in chromosome_runs(fileset.bim.chrom, fileset.prefix):
        kind = code if code in (CHROM_X, CHROM_Y) else 0
        if segments and segments[-1][0] == kind and segments[-1][2] == a:
            segments[-1] = (kind, segments[-1][1], b)
        else:
            segments.append((kind, a, b))
    return segments


class GroupCounter:
    """Counts GroupCounts block by block: per ploidy segment, the groups it needs (male groups
    on chrX/chrY only), identical masks counted once."""

    def __init__(self, fileset: PlinkFileset, groups: SampleGroups) -> None:
        self.n_samples = fileset.n_samples
        self.segments = ploidy_segments(fileset)
        masks = groups.masks()
        self.plans: dict[int, tuple[list[np.ndarray], list[tuple[int, int]]]] = {}
        for kind in {k for k, _, _ in self.segments}:
            wanted = (
                range(N_GROUPS) if kind in (CHROM_X, CHROM_Y) else (ALL, FOUNDERS, FOUNDER_CONTROLS)
            )
            distinct: list[int] = []
            slots: list[tuple[int, int]] = []  # (group, index in distinct)
            for g in wanted:
                same = next(
                    (i for i, d in enumerate(distinct) if np.array_equal(masks[d], masks[g])), None
                )
                if same is None:
                    distinct.append(g)
                    same = len(distinct) - 1
                slots.append((g, same))
            self.plans[kind] = ([masks[d] for d in distinct], slots)
        # For the compiled kernel: per kind the mask words, the sample counts and the mask
        # of each of the 6 groups (-1: not counted, zero).
        self.kernel_plans: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for kind, (kind_masks, slots) in self.plans.items():
            slot_of = np.full(N_GROUPS, -1, dtype=np.int32)
            for g, i in slots:
                slot_of[g] = i
            words = np.ascontiguousarray(np.stack([sample_mask_words(m) for m in kind_masks]))
            sizes = np.array([np.count_nonzero(m) for m in kind_masks], dtype=np.int32)
            self.kernel_plans[kind] = (words, sizes, slot_of)

    def count(self, rows: np.ndarray, start: int) -> np.ndarray:
        """GroupCounts (6, 4, n_rows) int32 of ``rows``, the file rows from ``start`` on."""
        n = rows.shape[0]
        stop = start + n
        fast = _ext is not None and rows.flags.c_contiguous
        out = (np.empty if fast else np.zeros)((N_GROUPS, 4, n), dtype=np.int32)
        for kind, a, b in self.segments:
            a, b = max(a, start), min(b, stop)
            if a >= b:
                continue
            if fast:
                words, sizes, slot_of = self.kernel_plans[kind]
                nb = rows.shape[1]
                args = (words, len(sizes), sizes, slot_of, out, a - start, n)
                _ext.group_counts(rows, nb, a - start, b - start, *args)
                continue
            masks, slots = self.plans[kind]
            c = count_genotypes(rows, self.n_samples, masks, a - start, b - start, threads=1)
            for g, i in slots:
                out[g, :, a - start : b - start] = c[i]
        return out


def group_counts(fileset: PlinkFileset, groups: SampleGroups) -> np.ndarray:
    """GroupCounts for every variant: (6, 4, n_snps) int32 [hom A1, het, hom A2, missing].

    Male groups are counted on chrX/chrY only (zero elsewhere).
    """
    counter = GroupCounter(fileset, groups)
    out = np.zeros((N_GROUPS, 4, fileset.n_snps), dtype=np.int32)
    bed = fileset.rows

    def run(a: int, b: int) -> None:
        out[:, :, a:b] = counter.count(read_rows(bed, a, b), a)

    for _ in map_ordered(run, row_blocks(0, fileset.n_snps, bed.shape[1])):
        pass
    return out


def sample_missing(fileset: PlinkFileset) -> tuple[np.ndarray, int]:
    """Missing calls per sample over all variants (chrY: males only), and the chrY count."""
    male = fileset.fam.male
    everyone = np.ones(fileset.n_samples, dtype=bool)
    total = np.zeros(fileset.n_samples, dtype=np.int64)
    n_y = 0
    for kind, a, b in ploidy_segments(fileset):
        mask = male if kind == CHROM_Y else everyone
        n_y += (b - a) if kind == CHROM_Y else 0
        total += sample_missing_counts(fileset.rows, fileset.n_samples, mask, a, b)
    return total, n_y


def _prefetched_missing(counts: MissingCounts | None, fs: PlinkFileset) -> np.ndarray | None:
    """``qc_prefetch``'s --mind counts when they are those of ``fs`` (same shape, no chrY
    row), else None (then ``sample_missing`` counts them)."""
    if counts is None or (counts.n_samples, counts.n_snps) != (fs.n_samples, fs.n_snps):
        return None
    if bool((fs.bim.chrom == CHROM_Y).any()):
        return None
    return np.frombuffer(counts.counts, np.uint32)[: counts.n_samples].astype(np.int64)


@dataclass
class OutputRows:
    """What a filtering pass also writes: the kept rows of each block, in input order, for
    the samples ``keep_samples`` (None: all), A1/A2 swapped where A2 is the minor allele
    unless ``keep_allele_order``."""

    path: Path
    keep_samples: np.ndarray | None
    keep_allele_order: bool
    # the .bim lines of the kept rows too, to this path (None: written after the pass)
    bim_path: Path | None = None


def filter_variants(
    fileset: PlinkFileset,
    groups: SampleGroups,
    config: QCConfig | QCThresholds,
    output: OutputRows | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """``variant_filters`` over the whole file, block by block (the counts of a block are
    dropped once filtered). With ``output``, the kept rows are written to ``output.path``
    (a .bed) while the block is in cache, by the worker that made them (``OrderedWriter``).
    Returns (status, a2_freq, HWE p-value of each SNP --hwe removed, the removed IDs of each
    filter as JSON array items or None, see ``json_id_items``): the items are written per
    block by the worker, while the block's .bim lines are in cache."""
    counter = GroupCounter(fileset, groups)
    chrom, bed, n = fileset.bim.chrom, fileset.rows, fileset.n_samples

    spans = row_blocks(0, fileset.n_snps, bed.shape[1])
    start = {a: k for k, (a, _) in enumerate(spans)}
    bim_path = None if output is None else output.bim_path
    writers: list[OrderedWriter] = []

    def run(a: int, b: int) -> tuple:
        try:
            rows = read_rows(bed, a, b)
            counts = counter.count(rows, a)
            status, a2 = variant_filters(counts, chrom[a:b], config, groups.controls_only)
            gone = np.flatnonzero(status == FAILED_HWE)
            p = np.zeros(0)
            if gone.size:
                h = hwe_counts(counts, chrom[a:b], groups.controls_only, gone)
                p = hwe_exact_p_array(h[0], h[1], h[2], config.hwe_midp)
            if output is not None:
                kept = np.flatnonzero(status == KEPT)
                swap = np.zeros(kept.size, bool) if output.keep_allele_order else a2[kept] < 0.5
                packed = extract_rows(rows, n, kept, swap, output.keep_samples, threads=1)
                writers[0].write(start[a], memoryview(packed.reshape(-1)))
                if bim_path is not None:
                    writers[1].write(
                        start[a], memoryview(bim_block_lines(fileset.bim, kept + a, swap))
                    )
            items = [json_id_items(fileset.bim, np.flatnonzero(status == c) + a) for c in FILTERS]
        except BaseException:
            for w in writers:
                w.abort(start[a])
            raise
        return a, status, a2, gone + a, p, items

    status = np.zeros(fileset.n_snps, dtype=np.int8)
    a2 = np.zeros(fileset.n_snps)
    gone_rows, gone_p = [np.zeros(0, np.int64)], [np.zeros(0)]
    items: list[list[str | None]] = [[] for _ in FILTERS]
    paths = [] if output is None else [output.path, *([bim_path] if bim_path else [])]
    with ExitStack() as stack:
        for path, header in zip(paths, (BED_MAGIC, b""), strict=False):
            writers.append(stack.enter_context(OrderedWriter(path, len(spans), header)))
        for a, st, f, gone, p, block_items in map_ordered(run, spans):
            status[a : a + st.size], a2[a : a + st.size] = st, f
            gone_rows.append(gone)
            gone_p.append(p)
            for k, text in enumerate(block_items):
                items[k].append(text)
    gone, p = np.concatenate(gone_rows), np.concatenate(gone_p)
    hwe_p = dict(zip(fileset.bim.strings(1, gone), p.tolist(), strict=True)) if gone.size else {}
    removed_json = {
        FILTER_NAMES[c]: None if None in parts else ", ".join(t for t in parts if t)
        for c, parts in zip(FILTERS, items, strict=True)
    }
    return status, a2, hwe_p, removed_json


def json_id_items(bim: Bim, rows: np.ndarray) -> str | None:
    """The IDs of ``rows`` as JSON array items, ``json.dumps(ids)`` without its brackets, by
    the compiled kernel from the .bim's bytes; None when an ID has a byte JSON escapes (or
    without the extension): then ``json.dumps`` writes the list."""
    if not rows.size:
        return ""
    if _ext is None:
        return None
    starts = bim.tok_start[rows, 1].astype(np.int64)
    ends = bim.tok_end[rows, 1].astype(np.int64)
    out = np.empty(int((ends - starts).sum()) + 4 * rows.size, dtype=np.uint8)
    n = _ext.json_strings(bim.raw, starts, ends, out)
    return None if n < 0 else out[:n].tobytes().decode("ascii")


# ----------------------------------------------------------------------------- pipeline


@dataclass
class QCResult:
    """Outcome of one QC run. Arrays are over the input samples / variants."""

    prefix: str
    config: dict
    keep_allele_order: bool
    sample_removed_mind: np.ndarray  # (n_samples,) bool
    variant_status: np.ndarray  # (n_snps,) int8 KEPT / FAILED_*
    a2_freq: np.ndarray  # (n_snps,) founder frequency of the input .bim A2 allele
    reverse: np.ndarray  # (n_snps,) bool: A1/A2 swapped in the output
    output_order: np.ndarray  # input indices of the kept variants in output order
    hwe_controls_only: bool
    n_founders: int
    sample_ids: list[tuple[str, str]] = field(repr=False, default_factory=list)
    bim: Bim | None = field(repr=False, default=None)
    hwe_p_removed: dict[str, float] = field(default_factory=dict)
    # per filter name, its removed IDs as JSON array items (``json_id_items``); None or absent:
    # ``report_json`` encodes them
    removed_ids_json: dict[str, str | None] = field(repr=False, default_factory=dict)
    seconds: float = 0.0
    renamed_inputs: list[tuple[str, str]] = field(default_factory=list)  # (old, new) paths

    @property
    def kept_samples(self) -> np.ndarray:
        return ~self.sample_removed_mind

    def removed_snps(self, status: int) -> list[str]:
        """IDs of the variants that failed filter ``status`` (FAILED_GENO...)."""
        rows = np.flatnonzero(self.variant_status == status)
        return self.bim.strings(1, rows) if self.bim is not None and rows.size else []

    def summary(self) -> dict:
        """Sample and variant counts (removed per filter, kept)."""
        return {
            "removed_mind": int(self.sample_removed_mind.sum()),
            "kept_samples": int((~self.sample_removed_mind).sum()),
            "removed": {n: int((self.variant_status == c).sum()) for c, n in FILTER_NAMES.items()},
            "kept_variants": int((self.variant_status == KEPT).sum()),
        }

    def report(self, variant_ids: bool = True) -> dict:
        """Machine-readable QC report (JSON-serialisable). ``variant_ids`` False: each list
        of removed variant IDs is left empty (``report_json`` writes them itself)."""
        removed = {
            name: self.removed_snps(code) if variant_ids else []
            for code, name in FILTER_NAMES.items()
        }
        return {
            "input": self.prefix,
            "options": {**self.config, "keep_allele_order": self.keep_allele_order},
            "samples": {
                "input": int(self.sample_removed_mind.size),
                "removed_mind": int(self.sample_removed_mind.sum()),
                "kept": int((~self.sample_removed_mind).sum()),
                "founders_after_mind": self.n_founders,
                "removed_ids": [
                    {"fid": f, "iid": i}
                    for (f, i), r in zip(self.sample_ids, self.sample_removed_mind, strict=True)
                    if r
                ],
            },
            "variants": {
                "input": int(self.variant_status.size),
                "removed": {
                    name: int(np.count_nonzero(self.variant_status == code))
                    for code, name in FILTER_NAMES.items()
                },
                "kept": int((self.variant_status == KEPT).sum()),
                "removed_ids": removed,
                "allele_order_swapped": int(self.reverse[self.output_order].sum()),
            },
            "hwe": {
                "controls_only": self.hwe_controls_only,
                "p_removed": self.hwe_p_removed,
            },
            "seconds": round(self.seconds, 4),
        }

    def report_json(self) -> str:
        """``json.dumps(self.report())``, each list of removed variant IDs taken from
        ``removed_ids_json`` (or made by ``json_id_items`` from the .bim's bytes) without a str
        object per ID; ``json.dumps`` writes the lists those cannot."""
        if self.bim is None:
            return json.dumps(self.report())
        rep = self.report(variant_ids=False)
        marks = {name: f"\x00g2i-removed-ids:{name}" for name in FILTER_NAMES.values()}
        rep["variants"]["removed_ids"] = dict(marks)
        text = json.dumps(rep)
        for code, name in FILTER_NAMES.items():
            mark = json.dumps(marks[name])
            if text.count(mark) != 1:
                return json.dumps(self.report())
            items = self.removed_ids_json.get(name)
            if items is None:
                items = json_id_items(self.bim, np.flatnonzero(self.variant_status == code))
            if items is None:
                items = json.dumps(self.removed_snps(code))[1:-1]
            text = text.replace(mark, "[" + items + "]")
        return text


def run_qc(
    bfile: str | Path | PlinkFileset,
    config: QCConfig | QCThresholds | None = None,
    out: str | Path | None = None,
    *,
    keep_allele_order: bool = False,
    prefetch: Prefetch | None = None,
) -> QCResult:
    """Run PLINK-exact QC on a fileset; with ``out``, write ``out.bed/.bim/.fam``, ``out.irem``
    (when samples were removed), ``out.log`` and ``out.qc.json``.

    Thresholds that switch a filter off: mind >= 1, geno >= 1, hwe <= 0, maf <= 0. The file
    is read in blocks (--mind, then the variant filters, then the output), never whole.
    ``prefetch``: the .bim's tokens and --mind's counts, started before this module was
    imported (``qc_prefetch``, the CLI's); each is used only where it matches the fileset.
    """
    t0 = time.perf_counter()
    config = config or QCThresholds()
    if isinstance(bfile, PlinkFileset):
        fs, early = bfile, None
    else:
        # --mind's counts over every row start on a thread of their own while the .bim is
        # parsed (they need the .fam only); kept when the .bim has no chrY (males only there).
        # Without the CLI's prefetch, the .bim is parsed here, beside them.
        fam = read_fam(_with_suffix(Path(bfile), ".fam"))
        mind = config.mind < 1.0
        prefetch = prefetch or Prefetch(bfile, mind=mind, bim=False, n_samples=fam.n)
        fs = read_plink(bfile, fam, prefetch.bim())
        early = _prefetched_missing(prefetch.missing(), fs) if mind else None
    fam, bim = fs.fam, fs.bim
    chromosome_runs(bim.chrom, fs.prefix)
    if config.mind < 1.0:
        missing, n_y = (early, 0) if early is not None else sample_missing(fs)
        removed = mind_failures(missing, fam.male, fs.n_snps, n_y, config.mind)
    else:
        removed = np.zeros(fs.n_samples, dtype=bool)
    if removed.all():
        raise QCError(f"{fs.prefix}: all samples removed due to missing genotype data (--mind)")
    groups = sample_groups(fs, ~removed, config.hwe_include_nonctrl)
    output = None
    in_order = _is_sorted(bim.chrom, bim.pos)  # the output order is the input order
    if out is not None and in_order:
        # the output rows are the kept input rows in input order: write them in this pass
        keep_samples = None if not removed.any() else np.flatnonzero(~removed)
        bim_tmp = _tmp_path(Path(out), ".bim") if bim_lines_native(bim) else None
        output = OutputRows(_tmp_path(Path(out), ".bed"), keep_samples, keep_allele_order, bim_tmp)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        status, a2, hwe_p, removed_json = filter_variants(fs, groups, config, output)
        if fs.n_snps and not (status == KEPT).any():
            last = FILTER_NAMES[int(status.max())]
            raise QCError(f"{fs.prefix}: all variants removed; the last ones by --{last}")
    except BaseException:
        if output is not None:
            output.path.unlink(missing_ok=True)
            if output.bim_path is not None:
                output.bim_path.unlink(missing_ok=True)
        raise
    reverse = np.zeros(fs.n_snps, dtype=bool) if keep_allele_order else a2 < 0.5
    kept = np.flatnonzero(status == KEPT)
    order = kept if in_order else kept[sorted_order(bim.chrom[kept], bim.pos[kept])]
    result = QCResult(
        prefix=str(fs.prefix),
        config=qc_options(config),
        keep_allele_order=keep_allele_order,
        sample_removed_mind=removed,
        variant_status=status,
        a2_freq=a2,
        reverse=reverse,
        output_order=order,
        hwe_controls_only=groups.controls_only,
        n_founders=int(np.count_nonzero(groups.remaining & groups.founder)),
        sample_ids=list(zip(fam.fid, fam.iid, strict=True)),
        bim=bim,
        hwe_p_removed=hwe_p,
        removed_ids_json=removed_json,
    )
    if out is not None:
        write_qc_outputs(
            fs,
            result,
            out,
            bed_written=output is not None,
            bim_written=output is not None and output.bim_path is not None,
        )
    result.seconds = time.perf_counter() - t0
    if out is not None:
        _write_report(result, out)
    return result


def write_qc_outputs(
    fs: PlinkFileset,
    result: QCResult,
    out: str | Path,
    bed_written: bool = False,
    bim_written: bool = False,
) -> None:
    """Write ``out.bed/.bim/.fam`` and ``out.irem`` as ``plink1.9 --make-bed`` does
    (``bed_written`` / ``bim_written``: that file is already at its temporary name, see
    ``filter_variants``).

    Each file is written under a temporary name and renamed into place when all are written,
    so a failure leaves no partial output; an output that is an input file (``--out`` equal
    to ``--bfile``) first has the input renamed with a trailing ``~``, as plink1.9 does (the
    fileset keeps reading the renamed files). ``result.renamed_inputs`` lists those renames.
    The previous ``out.bed/.bim/.fam`` (of an earlier run) are deleted on a thread of their
    own while the rest is written, once the filters have passed: freeing a large file's
    blocks takes about as long as writing the .bim, and plink1.9 replaces them as well.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.renamed_inputs = _set_inputs_aside(fs.prefix, out)
    keep = result.kept_samples
    keep_idx = None if keep.all() else np.flatnonzero(keep)
    suffixes = (".bed", ".bim", ".fam")
    release = _delete_previous_outputs(fs.prefix, out, suffixes)
    with _replacing(out, suffixes) as tmp:
        try:
            if not bed_written:
                rows = _output_rows(fs, result.output_order, result.reverse, keep_idx)
                write_bed_rows(tmp[".bed"], rows)
            if not bim_written:
                order = result.output_order
                write_bim_subset(tmp[".bim"], fs.bim, order, result.reverse[order])
            write_fam_subset(tmp[".fam"], fs.fam, keep)
        finally:
            release.join()  # before the renames into place (or the clean-up on failure)
    irem = _with_suffix(out, ".irem")
    if result.sample_removed_mind.any():
        ids = zip(result.sample_ids, result.sample_removed_mind, strict=True)
        _write_text(irem, "".join(f"{f}\t{i}\n" for (f, i), r in ids if r))
    elif irem.exists():
        irem.unlink()


def _output_rows(
    fs: PlinkFileset, order: np.ndarray, reverse: np.ndarray, keep_idx: np.ndarray | None
) -> Iterator[np.ndarray]:
    """The output .bed rows in blocks: rows ``order`` of the input, A1/A2 swapped where
    ``reverse[row]``, samples ``keep_idx`` (None: all). Ascending ``order`` (a sorted input)
    streams the input block by block; any other order gathers from the memory map."""
    n = fs.n_samples
    if order.size and np.all(order[1:] > order[:-1]):
        bed = fs.rows
        blocks = row_blocks(int(order[0]), int(order[-1]) + 1, bed.shape[1])
        bounds = np.searchsorted(order, [a for a, _ in blocks] + [blocks[-1][1]])

        def run(k: int, _: int) -> np.ndarray:
            a, b = blocks[k]
            rows = order[bounds[k] : bounds[k + 1]]
            block = read_rows(bed, a, b)
            return extract_rows(block, n, rows - a, reverse[rows], keep_idx, threads=1)

        yield from map_ordered(run, [(k, k + 1) for k in range(len(blocks))])
        return
    step = 1 << 16
    for a in range(0, order.size, step):
        rows = order[a : a + step]
        yield extract_rows(fs.bed, n, rows, reverse[rows], keep_idx)


def _delete_previous_outputs(prefix: Path, out: Path, suffixes: Sequence[str]) -> threading.Thread:
    """A started thread deleting each ``out + suffix`` that exists and is none of the input
    files (those were set aside already when ``--out`` equals ``--bfile``)."""
    inputs = [p for p in (_with_suffix(prefix, s) for s in suffixes) if p.exists()]

    def delete() -> None:
        for s in suffixes:
            old = _with_suffix(out, s)
            try:
                if any(os.path.samefile(old, p) for p in inputs):
                    continue
                old.unlink()
            except FileNotFoundError:
                continue

    thread = threading.Thread(target=delete, name="g2i-qc-delete-old-outputs")
    thread.start()
    return thread


def _set_inputs_aside(prefix: Path, out: Path) -> list[tuple[str, str]]:
    """Rename each input file that an output would replace to ``NAME~`` (plink1.9's rule)."""
    renamed = []
    for ext in (".bed", ".bim", ".fam"):
        src, dst = _with_suffix(prefix, ext), _with_suffix(out, ext)
        if src.exists() and dst.exists() and os.path.samefile(src, dst):
            aside = src.with_name(src.name + "~")
            os.replace(src, aside)
            renamed.append((str(src), str(aside)))
    return renamed


@contextmanager
def _replacing(prefix: Path, suffixes: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Temporary paths for ``prefix + suffix`` files, renamed into place on success and
    removed on failure."""
    tmp = {s: _tmp_path(prefix, s) for s in suffixes}
    try:
        yield tmp
    except BaseException:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise
    for s, path in tmp.items():
        os.replace(path, _with_suffix(prefix, s))


def _tmp_path(prefix: Path, suffix: str) -> Path:
    """Where ``prefix + suffix`` is written before it is renamed into place."""
    return prefix.with_name(f".{prefix.name}{suffix}.{os.getpid()}.tmp")


def _is_sorted(chrom: np.ndarray, pos: np.ndarray) -> bool:
    """Input order is PLINK's output order: chromosome codes, then positions, ascending."""
    same = chrom[1:] == chrom[:-1]
    return bool(np.all(chrom[1:] >= chrom[:-1]) and np.all(~same | (pos[1:] >= pos[:-1])))


def _write_text(path: Path, text: str) -> None:
    with _replacing(path, ("",)) as tmp:
        tmp[""].write_text(text)


def _with_suffix(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def _write_report(result: QCResult, out: str | Path) -> None:
    out = Path(out)
    text = result.report_json()
    _write_text(_with_suffix(out, ".qc.json"), text + "\n")
    rep = result.report(variant_ids=False)
    _write_text(_with_suffix(out, ".log"), format_log(rep, out))


def format_log(report: dict, out: Path) -> str:
    """A PLINK-style human-readable log of one run."""
    o, s, v = report["options"], report["samples"], report["variants"]
    lines = [
        "g2i-qc (PLINK 1.9-compatible genotype QC)",
        "Options in effect:",
        f"  --bfile {report['input']}",
    ]
    lines += [f"  --mind {o['mind']}"] if o["mind"] < 1 else []
    lines += [f"  --geno {o['geno']}"] if o["geno"] < 1 else []
    if o["hwe"] > 0:
        mods = (" midp" if o["hwe_midp"] else "") + (
            " include-nonctrl" if o["hwe_include_nonctrl"] else ""
        )
        lines.append(f"  --hwe {o['hwe']}{mods}")
    lines += [f"  --maf {o['maf']}"] if o["maf"] > 0 else []
    lines += ["  --keep-allele-order"] if o["keep_allele_order"] else []
    lines += [
        f"  --out {out}",
        "",
        f"{v['input']} variants and {s['input']} people loaded.",
        f"{s['removed_mind']} people removed due to missing genotype data (--mind).",
    ]
    if s["removed_mind"]:
        lines.append(f"IDs written to {out}.irem .")
    lines += [
        f"Before main variant filters, {s['founders_after_mind']} founders and "
        f"{s['kept'] - s['founders_after_mind']} nonfounders present.",
        f"{v['removed']['geno']} variants removed due to missing genotype data (--geno).",
        f"--hwe: {v['removed']['hwe']} variants removed due to Hardy-Weinberg exact test"
        + (" (controls only)." if report["hwe"]["controls_only"] else "."),
        f"{v['removed']['maf']} variants removed due to minor allele threshold(s) (--maf).",
        f"{v['kept']} variants and {s['kept']} people pass filters and QC.",
        f"--make-bed to {out}.bed + {out}.bim + {out}.fam ... done.",
        f"QC report: {out}.qc.json ({report['seconds']} s).",
    ]
    return "\n".join(lines) + "\n"


def qc_thresholds(
    mind: float | None = None,
    geno: float | None = None,
    maf: float | None = None,
    hwe: float | None = None,
    hwe_modifiers: Sequence[str] = (),
) -> QCThresholds:
    """Thresholds with PLINK's meaning of absent flags (filter off)."""
    return QCThresholds(
        mind=1.0 if mind is None else mind,
        geno=1.0 if geno is None else geno,
        maf=0.0 if maf is None else maf,
        hwe=0.0 if hwe is None else hwe,
        hwe_midp="midp" in hwe_modifiers,
        hwe_include_nonctrl="include-nonctrl" in hwe_modifiers,
    )


def qc_config(
    mind: float | None = None,
    geno: float | None = None,
    maf: float | None = None,
    hwe: float | None = None,
    hwe_modifiers: Sequence[str] = (),
) -> QCConfig:
    """A ``conf.schema.QCConfig`` with PLINK's meaning of absent flags (filter off)."""
    from conf.schema import QCConfig

    return QCConfig(**qc_options(qc_thresholds(mind, geno, maf, hwe, hwe_modifiers)))
