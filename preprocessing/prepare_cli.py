"""``g2i-prepare``: one site's folder to a cached training dataset.

Usage::

    g2i-prepare site_dir=data/cohort/site-0 output_dir=data/prepared/site-0
    g2i-prepare site_dir=... output_dir=... data.image_size=256 data.n_slices=5 data.qc.maf=0.05
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from conf import load_config, to_object
from conf.schema import DataConfig
from preprocessing.dataset import prepare_site
from preprocessing.errors import G2IError
from preprocessing.site import site_genotype_panel

HELP = """usage: g2i-prepare site_dir=PATH output_dir=PATH [KEY=VALUE ...] [--help]

Run genotype QC and the AD SNP panel on SITE_DIR/genotypes, extract normalised axial slices
from SITE_DIR/mri/*.nii.gz, join them with SITE_DIR/clinical.csv by subject ID, and write a
cached dataset (images.npy, genotypes.npy, manifest.json) to OUTPUT_DIR. Rebuilt only when
inputs or config change. Subjects missing a modality or with a bad scan are excluded and
listed with the reason in the manifest.

Keys (Hydra overrides of the data config):
  data.image_size=64            slice size in pixels (256 for the paper config)
  data.slice_z_mm=18            MNI z of the central slice (through the lateral ventricles)
  data.n_slices=1 data.slice_spacing_mm=2
  data.normalization=percentile|zscore  data.intensity_percentiles=[0.5,99.5]
  data.val_fraction=0.15 data.test_fraction=0.15 seed=0
  data.dx_column=auto|DX|DX_bl  data.dx_map.<VALUE>=CN|MCI|AD
  data.qc.mind=0.05 data.qc.geno=0.05 data.qc.maf=0.01 data.qc.hwe=1e-5
  catalog=PATH                  your own SNP catalog (default: the shipped AD catalog)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or "-h" in args or "--help" in args:
        print(HELP)
        return 0
    own = {
        k: v
        for k, _, v in (a.partition("=") for a in args)
        if k in ("site_dir", "output_dir", "catalog")
    }
    missing = [k for k in ("site_dir", "output_dir") if k not in own]
    if missing:
        print(f"g2i-prepare: missing {', '.join(missing)}=PATH\n\n{HELP}", file=sys.stderr)
        return 2
    rest = [a for a in args if a.partition("=")[0] not in own]
    cfg = load_config(overrides=rest)
    data: DataConfig = to_object(cfg.data)
    out = Path(own["output_dir"])
    source = partial(site_genotype_panel, work_dir=out, qc=data.qc, catalog=own.get("catalog"))
    try:
        manifest = prepare_site(own["site_dir"], out, data, source, seed=cfg.seed)
    except (G2IError, FileNotFoundError) as exc:
        print(f"g2i-prepare: {exc}", file=sys.stderr)
        return 2
    splits = {
        s: sum(x["split"] == s for x in manifest["subjects"]) for s in ("train", "val", "test")
    }
    print(
        json.dumps(
            {
                "output_dir": str(out),
                "subjects": len(manifest["subjects"]),
                "splits": splits,
                "snps": len(manifest["snp_names"]),
                "excluded": len(manifest["exclusions"]),
            }
        )
    )
    for e in manifest["exclusions"]:
        print(f"  excluded {e['subject']}: {e['reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
