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

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from conf import load_config, to_object
from conf.schema import DataConfig
from preprocessing.dataset import prepare_site
from preprocessing.errors import G2IError
from preprocessing.site import site_genotype_panel

HELP = """usage: g2i-prepare site_dir=PATH output_dir=PATH [KEY=VALUE ...] [--help]

Run genotype QC and the AD SNP panel on SITE_DIR/genotypes, extract normalised axial slices
from SITE_DIR/mri/*.nii.gz, join them with SITE_DIR/clinical.csv by subject ID, and write a
cached dataset (images.npy, genotypes.npy, manifest.json) to OUTPUT_DIR. Rebuilt only when
the inputs' contents or the config change. Subjects missing a modality or with a bad scan
are excluded and listed with the reason in the manifest.

Keys (Hydra overrides of the data config):
  data.image_size=64            slice size in pixels (256 for the paper config)
  data.slice_z_mm=18            MNI z of the central slice (through the lateral ventricles)
  data.n_slices=1 data.slice_spacing_mm=2
  data.normalization=percentile|zscore  data.intensity_percentiles=[0.5,99.5]
  data.val_fraction=0.15 data.test_fraction=0.15 seed=0
  data.dx_column=auto|DX|DX_bl  data.dx_map.<VALUE>=CN|MCI|AD
  data.qc.mind=0.05 data.qc.geno=0.05 data.qc.maf=0.01 data.qc.hwe=1e-5
  data.mni_min_correlation=0.5  minimum correlation with the MNI152 template per scan
  catalog=PATH                  your own SNP catalog (default: the shipped AD catalog)
  lock_timeout=3600             seconds to wait for another run on the same output_dir

Exit status: 0 with a dataset; 2 with a one-line message naming the file and the fix (bad
input, no usable subject, output_dir held by another run).
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or "-h" in args or "--help" in args:
        print(HELP)
        return 0
    own = {
        k: v
        for k, _, v in (a.partition("=") for a in args)
        if k in ("site_dir", "output_dir", "catalog", "lock_timeout")
    }
    missing = [k for k in ("site_dir", "output_dir") if k not in own]
    if missing:
        print(f"g2i-prepare: missing {', '.join(missing)}=PATH\n\n{HELP}", file=sys.stderr)
        return 2
    rest = [a for a in args if a.partition("=")[0] not in own]
    try:
        cfg = load_config(overrides=rest)
        data: DataConfig = to_object(cfg.data)
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0]
        print(f"g2i-prepare: bad KEY=VALUE argument ({first}); see --help", file=sys.stderr)
        return 2
    site, out = Path(own["site_dir"]), Path(own["output_dir"])
    if not site.is_dir():
        print(f"g2i-prepare: site_dir={site} is not a folder", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"g2i-prepare: output_dir={out} is a file; give a folder", file=sys.stderr)
        return 2
    catalog = own.get("catalog")
    source = partial(site_genotype_panel, work_dir=out, qc=data.qc, catalog=catalog)
    try:
        manifest = prepare_site(
            site,
            out,
            data,
            source,
            seed=cfg.seed,
            extra_inputs=None if catalog is None else [catalog],
            lock_timeout_s=float(own.get("lock_timeout", 3600)),
        )
    except OSError as exc:
        where = exc.filename if exc.filename else out
        print(f"g2i-prepare: {where}: {exc.strerror or exc}; check the path", file=sys.stderr)
        return 2
    except (G2IError, ValueError) as exc:
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
    for note in manifest.get("clinical", {}).get("notes", []):
        print(f"  clinical.csv: {note}")
    for warning in manifest.get("warnings", []):
        print(f"g2i-prepare: warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
