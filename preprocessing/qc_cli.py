"""``g2i-qc``: PLINK 1.9-compatible genotype QC from the command line.

Takes PLINK's own flags for these filters, e.g.::

    g2i-qc --bfile data/site-1/genotypes --mind 0.05 --geno 0.05 --hwe 1e-5 --maf 0.01 \\
        --out qc/site-1

and writes ``qc/site-1.bed/.bim/.fam`` (byte-identical to ``plink1.9 ... --make-bed``),
``qc/site-1.irem`` (samples removed by --mind), ``qc/site-1.log`` and ``qc/site-1.qc.json``.
``--hwe 1e-5 midp include-nonctrl`` takes PLINK's modifiers. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from preprocessing.errors import G2IError
from preprocessing.qc import qc_config, run_qc

HWE_MODIFIERS = ("midp", "include-nonctrl")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="g2i-qc",
        description="PLINK 1.9-exact genotype QC (--mind, --geno, --hwe, --maf, --make-bed).",
    )
    p.add_argument("--bfile", required=True, help="input prefix of .bed/.bim/.fam")
    p.add_argument("--out", default="plink", help="output prefix (default: plink)")
    p.add_argument("--mind", type=_fraction, nargs="?", const=0.1, help="max sample missing rate")
    p.add_argument("--geno", type=_fraction, nargs="?", const=0.1, help="max SNP missing rate")
    p.add_argument("--maf", type=_fraction, nargs="?", const=0.01, help="min minor allele freq")
    p.add_argument(
        "--hwe",
        nargs="+",
        metavar="P [midp] [include-nonctrl]",
        help="HWE exact test p-value threshold and PLINK's modifiers",
    )
    p.add_argument(
        "--keep-allele-order", action="store_true", help="keep .bim A1/A2 (no minor-allele A1)"
    )
    p.add_argument("--make-bed", action="store_true", help="accepted for PLINK compatibility")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hwe, modifiers = None, ()
    if args.hwe:
        modifiers = tuple(args.hwe[1:])
        bad = [m for m in modifiers if m not in HWE_MODIFIERS]
        if bad:
            print(f"g2i-qc: error: unknown --hwe modifier(s) {bad}", file=sys.stderr)
            return 2
        try:
            hwe = float(args.hwe[0])
        except ValueError:
            print(
                f"g2i-qc: error: --hwe threshold {args.hwe[0]!r} is not a number", file=sys.stderr
            )
            return 2
        if not 0.0 <= hwe < (0.5 if "midp" in modifiers else 1.0):
            print(
                "g2i-qc: error: --hwe threshold must be in [0, 1) ([0, 0.5) with midp)",
                file=sys.stderr,
            )
            return 2
    config = qc_config(args.mind, args.geno, args.maf, hwe, modifiers)
    try:
        result = run_qc(args.bfile, config, args.out, keep_allele_order=args.keep_allele_order)
    except G2IError as exc:
        print(f"g2i-qc: error: {exc}", file=sys.stderr)
        return 2
    rep = result.report()
    s, v = rep["samples"], rep["variants"]
    print(
        f"{s['removed_mind']} samples removed (--mind); variants removed: "
        f"{v['removed']['geno']} (--geno), {v['removed']['hwe']} (--hwe), "
        f"{v['removed']['maf']} (--maf); {v['kept']} variants and {s['kept']} samples written "
        f"to {args.out}.bed/.bim/.fam; report {args.out}.qc.json"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
