"""Federated QC: what plink1.9 would keep on the pooled cohort, from per-site counts only.

Each site applies ``--mind`` locally (a sample's missing rate needs only its own calls) and
sends ``SiteCounts``: per-SNP genotype counts of its remaining samples in the groups the
filters read (overall for --geno, founders for the allele frequencies, founder controls for a
controls-only --hwe; chrX/chrY also split by male), plus its sample totals and a fingerprint
of its .bim. No genotype leaves the site. The server sums the counts (``pool_counts``) and
applies the same rules as local QC (``preprocessing.qc.variant_filters``): the result is the
SNP keep-list and A1/A2 orientation that ``plink1.9 --mind --geno --hwe --maf --make-bed``
gives on the merged fileset. Sites then write their QC'd filesets with ``apply_keep_list``.

On the wire (``SiteCounts.to_arrays``) each group is three rows [hom A1, het, hom A2] in the
narrowest unsigned type that holds the site's sample count (missing = group size - calls), a
group equal to one already sent is sent as a reference to it, male groups cover the chrX/chrY
variants only and the chromosomes travel as runs: at 620,000 SNPs and 300 samples a site
sends about 7 MB instead of 120.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from preprocessing.errors import G2IError
from preprocessing.plink import CHROM_X, CHROM_Y, PlinkFileset, read_plink
from preprocessing.qc import (
    ALL,
    FILTER_NAMES,
    FOUNDER_CONTROLS,
    FOUNDERS,
    KEPT,
    MALE_FOUNDER_CONTROLS,
    MALE_FOUNDERS,
    MALES,
    MISSING,
    N_GROUPS,
    QCResult,
    QCThresholds,
    SampleGroups,
    group_counts,
    mind_failures,
    qc_options,
    sample_missing,
    sorted_order,
    variant_filters,
    write_qc_outputs,
)

if TYPE_CHECKING:
    from conf.schema import QCConfig

COMMON_GROUPS = (ALL, FOUNDERS, FOUNDER_CONTROLS)  # counted on every variant
MALE_GROUPS = (MALES, MALE_FOUNDERS, MALE_FOUNDER_CONTROLS)  # counted on chrX/chrY only


def needed_groups(config: QCConfig | QCThresholds, controls_only: bool) -> set[int]:
    """The GroupCounts groups ``variant_filters`` reads under ``config``."""
    groups = {FOUNDERS, MALE_FOUNDERS}  # allele frequencies (MAF, A1 orientation)
    if config.geno < 1.0:
        groups |= {ALL, MALES}
    if config.hwe > 0.0 and controls_only:
        groups |= {FOUNDER_CONTROLS, MALE_FOUNDER_CONTROLS}
    return groups


@dataclass
class SiteCounts:
    """What one site shares. counts: (6, 4, n_snps) int64 GroupCounts (see preprocessing.qc),
    zero in the groups not ``present``; sizes: (6,) samples per group; chrom: (n_snps,)
    codes; bim_fingerprint: SHA-256 of the variant IDs, chromosomes and alleles (sites must
    genotype the same variants in the same order)."""

    counts: np.ndarray
    chrom: np.ndarray
    bim_fingerprint: str
    n_samples: int
    n_removed_mind: int
    case_control: bool
    n_controls: int
    sizes: np.ndarray
    present: np.ndarray  # (6,) bool

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for a Flower ArrayRecord / np.savez (the only things sent)."""
        dtype = np.min_scalar_type(max(self.n_samples, 1))
        source = np.full(N_GROUPS, -1, dtype=np.int8)
        arrays: dict[str, np.ndarray] = {}
        for name, members, cols, n_cols in _wire_layout(self.chrom):
            sent: list[int] = []
            parts: list[np.ndarray] = []
            for g in (g for g in members if self.present[g]):
                calls = self.counts[g, :MISSING][:, cols]
                same = next(
                    (h for h, c in zip(sent, parts, strict=True) if np.array_equal(c, calls)), None
                )
                source[g] = g if same is None else same
                if same is None:
                    sent.append(g)
                    parts.append(calls)
            arrays[name] = (
                np.concatenate(parts).astype(dtype) if parts else np.zeros((0, n_cols), dtype)
            )
        change = np.flatnonzero(self.chrom[1:] != self.chrom[:-1]) + 1
        starts = np.concatenate([[0], change])
        runs = np.stack([self.chrom[starts], np.diff(np.append(starts, self.chrom.size))])
        meta = [self.n_samples, self.n_removed_mind, int(self.case_control), self.n_controls]
        return {
            **arrays,
            "groups": source,
            "sizes": self.sizes.astype(np.int64),
            "chrom-runs": runs.astype(np.int64),
            "meta": np.array(meta, dtype=np.int64),
            "fingerprint": np.frombuffer(bytes.fromhex(self.bim_fingerprint), dtype=np.uint8),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SiteCounts:
        n, removed, cc, ctrl = (int(v) for v in arrays["meta"])
        codes, lengths = np.asarray(arrays["chrom-runs"], dtype=np.int64)
        chrom = np.repeat(codes, lengths).astype(np.int16)
        source = np.asarray(arrays["groups"], dtype=np.int64)
        sizes = np.asarray(arrays["sizes"], dtype=np.int64)
        counts = np.zeros((N_GROUPS, 4, chrom.size), dtype=np.int64)
        for name, members, cols, n_cols in _wire_layout(chrom):
            sent = [g for g in members if source[g] == g]
            rows = np.asarray(arrays[name], dtype=np.int64).reshape(len(sent), MISSING, n_cols)
            for g in (g for g in members if source[g] >= 0):
                calls = rows[sent.index(int(source[g]))]
                counts[g, :MISSING][:, cols] = calls
                counts[g, MISSING][cols] = sizes[g] - calls.sum(axis=0)
        return cls(
            counts=counts,
            chrom=chrom,
            bim_fingerprint=bytes(np.asarray(arrays["fingerprint"], np.uint8)).hex(),
            n_samples=n,
            n_removed_mind=removed,
            case_control=bool(cc),
            n_controls=ctrl,
            sizes=sizes,
            present=source >= 0,
        )


def _wire_layout(chrom: np.ndarray) -> list[tuple[str, tuple[int, ...], slice | np.ndarray, int]]:
    """(array name, its groups, the variants it covers, how many) of the wire format."""
    xy = np.flatnonzero((chrom == CHROM_X) | (chrom == CHROM_Y))
    return [
        ("counts", COMMON_GROUPS, slice(None), chrom.size),
        ("male-counts", MALE_GROUPS, xy, xy.size),
    ]


def bim_fingerprint(fs: PlinkFileset) -> str:
    """SHA-256 over (chromosome, ID, A1, A2) of every variant, in file order."""
    h = hashlib.sha256()
    for k in (0, 1, 4, 5):
        h.update(b"\0".join(fs.bim.column(k).tolist()) + b"\1")
    h.update(fs.bim.chrom.astype("<i2").tobytes())
    return h.hexdigest()


def local_mind(fs: PlinkFileset, mind: float) -> np.ndarray:
    """``--mind`` on one site: (n_samples,) bool, True = removed."""
    if mind >= 1.0:
        return np.zeros(fs.n_samples, dtype=bool)
    missing, n_y = sample_missing(fs)
    return mind_failures(missing, fs.fam.male, fs.n_snps, n_y, mind)


def site_counts(bfile: str | Path | PlinkFileset, config: QCConfig | QCThresholds) -> SiteCounts:
    """Site side: local ``--mind``, then GroupCounts of the remaining samples in the groups
    the pooled filters can read under ``config``."""
    return _site_counts_and_groups(bfile, config)[0]


def released_site_counts(
    bfile: str | Path | PlinkFileset,
    config: QCConfig | QCThresholds,
    min_cell: int,
    noise_multiplier: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[SiteCounts, list[str]]:
    """``site_counts`` as a site releases them, and notes naming what changed.

    Exact (``noise_multiplier`` 0): no count describes fewer than ``min_cell`` subjects,
    directly or by differencing two released groups (``suppress_small_cells``). Noised:
    Gaussian noise of std ``noise_multiplier`` x ``counts_sensitivity`` on every value
    (``noisy_site_counts``, draws from ``rng``), then a group whose *noisy* size is below
    ``min_cell`` is suppressed (post-processing of the noisy values only)."""
    counts, masks = _site_counts_and_groups(bfile, config)
    if noise_multiplier <= 0:
        return suppress_small_cells(counts, masks, min_cell)
    if rng is None:
        raise ValueError("noised QC counts need the site's secret generator")
    sensitivity = counts_sensitivity(counts)
    out = noisy_site_counts(counts, noise_multiplier * sensitivity, rng)
    notes = [
        f"Gaussian noise, std {noise_multiplier:g} x L2 sensitivity {sensitivity:.1f} "
        "on every count"
    ]
    for g in range(N_GROUPS):
        if 0 < out.sizes[g] < min_cell:
            notes.append(f"{GROUP_LABELS[g]}: suppressed (noisy size < {min_cell})")
            out.counts[g] = 0
            out.sizes[g] = 0
    if 0 < out.n_removed_mind < min_cell:
        out.n_removed_mind = 0
    if 0 < out.n_controls < min_cell:
        out.n_controls = 0
    return out, notes


GROUP_LABELS = (
    "all",
    "founders",
    "founder controls",
    "males",
    "male founders",
    "male founder controls",
)


def suppress_small_cells(
    counts: SiteCounts, masks: np.ndarray, min_cell: int
) -> tuple[SiteCounts, list[str]]:
    """Counts safe to release: every set of subjects a reader can isolate by adding and
    subtracting released groups (an *atom*: the samples sharing one pattern of group
    membership) holds none or at least ``min_cell`` subjects.

    A group smaller than ``min_cell`` is suppressed (sent with size 0 and zero counts: the
    pooled statistic then lacks this site's part of it). A small atom inside a large group
    is removed by merging the group that cuts it off into its smallest released parent (the
    merged group is sent with the parent's counts; e.g. founders := all samples when three
    non-founders differ). Each change is named in the returned notes; with no note the counts
    are exactly ``site_counts``'s, and the federated QC equals pooled plink1.9.

    Args:
        masks: (6, n_samples) bool, the samples behind each group (``SampleGroups.masks``).
    """
    out = SiteCounts(**{**counts.__dict__, "counts": counts.counts.copy()})
    out.sizes = counts.sizes.copy()
    member = np.asarray(masks, dtype=bool).copy()
    released = [g for g in range(N_GROUPS) if out.present[g] and out.sizes[g] > 0]
    notes: list[str] = []
    for _ in range(4 * N_GROUPS):
        small = _smallest_small_atom(member, released, min_cell)
        if small is None:
            break
        pattern, size = small
        holding = sorted((g for g in released if pattern[g]), key=lambda g: out.sizes[g])
        group = holding[0]
        # The released groups that cut the small atom off from ``group``.
        cutters = [g for g in released if not pattern[g] and (member[g] & member[group]).any()]
        target = group
        if out.sizes[group] >= min_cell and cutters:
            target = max(cutters, key=lambda g: (int((member[g] & member[group]).sum()), -g))
            parents = [h for h in holding if (member[target] <= member[h]).all()]
            if parents:
                parent = min(parents, key=lambda h: out.sizes[h])
                notes.append(
                    f"{GROUP_LABELS[target]}: merged into {GROUP_LABELS[parent]} "
                    f"(a set of {size} < {min_cell} subjects told them apart)"
                )
                out.counts[target] = out.counts[parent]
                out.sizes[target] = out.sizes[parent]
                member[target] = member[parent]
                continue
        notes.append(
            f"{GROUP_LABELS[target]}: suppressed (a set of {size} < {min_cell} subjects "
            "could be told apart)"
        )
        out.counts[target] = 0
        out.sizes[target] = 0
        member[target] = False
        released.remove(target)
    if 0 < out.n_removed_mind < min_cell:
        notes.append(f"--mind removals: {out.n_removed_mind} < {min_cell}, sent as 0")
        out.n_removed_mind = 0
    if 0 < out.n_controls < min_cell:
        notes.append(f"controls: {out.n_controls} < {min_cell}, sent as 0")
        out.n_controls = 0
    return out, notes


def gaussian_counts(values: np.ndarray | int, std: float, rng: np.random.Generator) -> np.ndarray:
    """``values`` + N(0, std^2) noise, rounded and at least 0 (int64): a noisy count."""
    v = np.asarray(values, dtype=np.float64)
    return np.maximum(np.rint(v + rng.normal(0.0, std, v.shape)), 0).astype(np.int64)


def _fit_calls(calls: np.ndarray, size: int) -> None:
    """In place: where a SNP's noisy calls (3, n) add up to more than the group's noisy
    size, take the excess off its largest call counts (no negative missing count)."""
    cols = np.arange(calls.shape[1])
    for _ in range(MISSING):  # three passes always suffice: the calls hold the excess
        excess = np.maximum(calls.sum(axis=0) - max(size, 0), 0)
        top = calls.argmax(axis=0)
        calls[top, cols] -= np.minimum(calls[top, cols], excess)


def counts_sensitivity(counts: SiteCounts) -> float:
    """L2 sensitivity of a released ``SiteCounts`` to adding or removing one subject. In each
    released group (a male founder control is in all six) the subject moves one of the
    three call counts of every SNP the group covers, or none when its call is missing, and
    the group's size; and the sample, --mind and control totals by one each."""
    cover = {g: counts.chrom.size for g in COMMON_GROUPS}
    n_xy = int(np.count_nonzero((counts.chrom == CHROM_X) | (counts.chrom == CHROM_Y)))
    cover |= {g: n_xy for g in MALE_GROUPS}
    released = [g for g in range(N_GROUPS) if counts.present[g] and counts.sizes[g] > 0]
    return float(np.sqrt(sum(cover[g] + 1 for g in released) + 3))


def noisy_site_counts(
    counts: SiteCounts, std: float, rng: np.random.Generator
) -> SiteCounts:
    """``counts`` with Gaussian noise of ``std`` on every released value (the call counts
    and size of each released group, the three totals), each draw independent; then rounded
    and made consistent (no negative count, a group at least as large as its calls, the
    sample total at least as large as any group): post-processing, no further privacy cost.
    A suppressed group stays zero."""
    out = SiteCounts(**{**counts.__dict__, "counts": np.zeros_like(counts.counts)})

    def noisy(values: np.ndarray | int) -> np.ndarray:
        return gaussian_counts(values, std, rng)

    sizes = np.zeros(N_GROUPS, dtype=np.int64)
    for g in range(N_GROUPS):
        if not (counts.present[g] and counts.sizes[g] > 0):
            continue
        calls = noisy(counts.counts[g, :MISSING])
        sizes[g] = int(noisy(counts.sizes[g]))
        _fit_calls(calls, sizes[g])
        out.counts[g, :MISSING] = calls
    # A male group is part of its parent: on chrX/chrY its calls cannot exceed the parent's
    # (the pooled chrX HWE test reads their difference, the non-male founders).
    xy = np.flatnonzero((counts.chrom == CHROM_X) | (counts.chrom == CHROM_Y))
    for male, parent in zip(MALE_GROUPS, COMMON_GROUPS, strict=True):
        calls = out.counts[male, :MISSING]  # a view
        calls[:, xy] = np.minimum(calls[:, xy], out.counts[parent, :MISSING][:, xy])
        sizes[male] = min(sizes[male], sizes[parent])
        _fit_calls(calls, sizes[male])
    for g in range(N_GROUPS):
        out.counts[g, MISSING] = sizes[g] - out.counts[g, :MISSING].sum(axis=0)
    out.sizes = sizes
    out.n_samples = max(int(noisy(counts.n_samples)), int(sizes.max(initial=0)))
    out.n_removed_mind = int(noisy(counts.n_removed_mind))
    out.n_controls = int(noisy(counts.n_controls))
    return out


def _smallest_small_atom(
    member: np.ndarray, released: list[int], min_cell: int
) -> tuple[np.ndarray, int] | None:
    """(membership pattern over all 6 groups, size) of the smallest atom with 0 < size <
    ``min_cell`` among samples in at least one released group; None when there is none."""
    if not released:
        return None
    rows = np.zeros_like(member)
    rows[released] = member[released]
    inside = rows.any(axis=0)
    if not inside.any():
        return None
    patterns, sizes = np.unique(rows[:, inside].T, axis=0, return_counts=True)
    small = np.flatnonzero(sizes < min_cell)
    if small.size == 0:
        return None
    k = small[np.argmin(sizes[small])]
    return patterns[k], int(sizes[k])


def _site_counts_and_groups(
    bfile: str | Path | PlinkFileset, config: QCConfig | QCThresholds
) -> tuple[SiteCounts, np.ndarray]:
    fs = bfile if isinstance(bfile, PlinkFileset) else read_plink(bfile)
    removed = local_mind(fs, config.mind)
    fam = fs.fam
    # Controls are counted whenever the site has a case/control phenotype; the server
    # decides whether the pooled test uses them (all sites case/control, some control).
    groups = SampleGroups(~removed, fam.founder, fam.control, fam.male, fam.case_control)
    controls = fam.case_control and not config.hwe_include_nonctrl
    present = np.zeros(N_GROUPS, dtype=bool)
    present[list(needed_groups(config, controls))] = True
    counts = group_counts(fs, groups).astype(np.int64)
    counts[~present] = 0
    masks = np.stack(groups.masks())
    masks[~present] = False  # a group the filters do not read is neither counted nor sized
    return SiteCounts(
        counts=counts,
        chrom=fs.bim.chrom.copy(),
        bim_fingerprint=bim_fingerprint(fs),
        n_samples=fs.n_samples,
        n_removed_mind=int(removed.sum()),
        case_control=fam.case_control,
        n_controls=int(np.count_nonzero(fam.control & ~removed)),
        sizes=masks.sum(axis=1).astype(np.int64),
        present=present,
    ), masks


@dataclass
class FederatedQCResult:
    """Server-side outcome. status: (n_snps,) KEPT / FAILED_*; a2_freq: pooled founder A2
    frequency; reverse: (n_snps,) A1/A2 swapped in the output (A1 = pooled minor allele)."""

    status: np.ndarray
    a2_freq: np.ndarray
    reverse: np.ndarray
    hwe_controls_only: bool
    n_samples: int
    n_removed_mind: int

    @property
    def keep(self) -> np.ndarray:
        return self.status == KEPT

    def summary(self) -> dict:
        return {
            "samples": self.n_samples,
            "removed_mind": self.n_removed_mind,
            "removed": {n: int((self.status == c).sum()) for c, n in FILTER_NAMES.items()},
            "kept": int(self.keep.sum()),
            "hwe_controls_only": self.hwe_controls_only,
        }


def pool_counts(sites: list[SiteCounts]) -> SiteCounts:
    """Sum site counts; refuses sites whose variant lists differ."""
    if not sites:
        raise G2IError("federated QC needs at least one site's counts")
    ref = sites[0]
    for k, s in enumerate(sites[1:], start=1):
        if s.bim_fingerprint != ref.bim_fingerprint or s.counts.shape != ref.counts.shape:
            raise G2IError(
                f"site {k} genotyped other variants than site 0 (different .bim); align the "
                "arrays (same SNPs, order and alleles) before federated QC"
            )
    return SiteCounts(
        counts=np.sum([s.counts for s in sites], axis=0),
        chrom=ref.chrom,
        bim_fingerprint=ref.bim_fingerprint,
        n_samples=sum(s.n_samples for s in sites),
        n_removed_mind=sum(s.n_removed_mind for s in sites),
        case_control=all(s.case_control for s in sites),
        n_controls=sum(s.n_controls for s in sites),
        sizes=np.sum([s.sizes for s in sites], axis=0),
        present=np.logical_and.reduce([s.present for s in sites]),
    )


def federated_variant_qc(
    sites: list[SiteCounts], config: QCConfig | QCThresholds, keep_allele_order: bool = False
) -> FederatedQCResult:
    """Server side: the SNP keep-list plink1.9 gives on the pooled cohort."""
    pooled = pool_counts(sites)
    controls_only = pooled.case_control and pooled.n_controls > 0 and not config.hwe_include_nonctrl
    lacking = sorted(g for g in needed_groups(config, controls_only) if not pooled.present[g])
    if lacking:
        raise G2IError(
            f"the sites' QC counts lack groups {lacking} that these thresholds need; sites and "
            "server must use the same QC thresholds (data.qc)"
        )
    status, a2 = variant_filters(pooled.counts, pooled.chrom, config, controls_only)
    reverse = np.zeros(a2.size, dtype=bool) if keep_allele_order else a2 < 0.5
    return FederatedQCResult(
        status, a2, reverse, controls_only, pooled.n_samples, pooled.n_removed_mind
    )


def apply_keep_list(
    bfile: str | Path | PlinkFileset,
    decision: FederatedQCResult,
    config: QCConfig | QCThresholds,
    out: str | Path,
) -> QCResult:
    """Site side: write the QC'd fileset with the federation's keep-list and orientation
    (local ``--mind`` removals, ``.irem``, ``.bed/.bim/.fam`` as plink would write them)."""
    fs = bfile if isinstance(bfile, PlinkFileset) else read_plink(bfile)
    removed = local_mind(fs, config.mind)
    kept = np.flatnonzero(decision.keep)
    result = QCResult(
        prefix=str(fs.prefix),
        config=qc_options(config),
        keep_allele_order=not decision.reverse.any(),
        sample_removed_mind=removed,
        variant_status=decision.status,
        a2_freq=decision.a2_freq,
        reverse=decision.reverse,
        output_order=kept[sorted_order(fs.bim.chrom[kept], fs.bim.pos[kept])],
        hwe_controls_only=decision.hwe_controls_only,
        n_founders=int(np.count_nonzero(fs.fam.founder & ~removed)),
        sample_ids=list(zip(fs.fam.fid, fs.fam.iid, strict=True)),
        bim=fs.bim,
    )
    write_qc_outputs(fs, result, out)
    return result
