"""Writing PLINK 1 binary filesets (.bed/.bim/.fam).

Genotypes are held SNP-major, as in the file: ``genotypes[j, i]`` is the number of copies of
the .bim A1 allele (column 5) that sample ``i`` carries at SNP ``j`` (0, 1, 2), or -1 when
missing. The .bed codes per sample are 00 = A1/A1, 01 = missing, 10 = A1/A2, 11 = A2/A2,
four samples per byte, the first sample in the two lowest bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BED_MAGIC = bytes([0x6C, 0x1B, 0x01])

# A1 copies (index 0..2, and 3 for missing) -> 2-bit .bed code.
_CODE_OF_COUNT = np.array([0b11, 0b10, 0b00, 0b01], dtype=np.uint8)


@dataclass(frozen=True)
class Variant:
    """One .bim line."""

    chrom: str
    snp_id: str
    cm: float
    pos: int
    a1: str
    a2: str


@dataclass(frozen=True)
class Sample:
    """One .fam line. ``sex``: 1 male, 2 female, 0 unknown; ``phenotype``: 1 control,
    2 case, -9 missing."""

    fid: str
    iid: str
    father: str = "0"
    mother: str = "0"
    sex: int = 0
    phenotype: float = -9


def pack_bed_rows(genotypes: np.ndarray) -> np.ndarray:
    """Pack SNP-major A1 counts (n_snps, n_samples) into .bed bytes (n_snps, ceil(n/4))."""
    g = np.asarray(genotypes)
    if g.ndim != 2:
        raise ValueError(f"genotypes must be 2-D (n_snps, n_samples), got shape {g.shape}")
    if g.size and (g.min() < -1 or g.max() > 2):
        raise ValueError("genotypes must hold A1 counts 0, 1, 2 or -1 for missing")
    n_snps, n_samples = g.shape
    idx = np.where(g < 0, 3, g).astype(np.uint8)
    codes = _CODE_OF_COUNT[idx]
    pad = (-n_samples) % 4
    if pad:
        # Padding bits are zero, as PLINK writes them.
        codes = np.concatenate([codes, np.zeros((n_snps, pad), dtype=np.uint8)], axis=1)
    codes = codes.reshape(n_snps, -1, 4)
    return (
        codes[..., 0] | (codes[..., 1] << 2) | (codes[..., 2] << 4) | (codes[..., 3] << 6)
    ).astype(np.uint8)


def _fmt_pheno(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_plink(
    prefix: str | Path,
    genotypes: np.ndarray,
    variants: Sequence[Variant],
    samples: Sequence[Sample],
) -> None:
    """Write ``prefix.bed``, ``prefix.bim`` and ``prefix.fam`` (SNP-major)."""
    prefix = Path(prefix)
    g = np.asarray(genotypes)
    if g.shape != (len(variants), len(samples)):
        raise ValueError(
            f"genotypes shape {g.shape} does not match {len(variants)} variants x "
            f"{len(samples)} samples"
        )
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.with_suffix(".bed"), "wb") as fh:
        fh.write(BED_MAGIC)
        fh.write(pack_bed_rows(g).tobytes())
    bim_lines = (f"{v.chrom}\t{v.snp_id}\t{v.cm:g}\t{v.pos}\t{v.a1}\t{v.a2}\n" for v in variants)
    prefix.with_suffix(".bim").write_text("".join(bim_lines))
    fam_lines = (
        f"{s.fid} {s.iid} {s.father} {s.mother} {s.sex} {_fmt_pheno(s.phenotype)}\n"
        for s in samples
    )
    prefix.with_suffix(".fam").write_text("".join(fam_lines))
