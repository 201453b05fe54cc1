"""Real test slices of the prepared sites next to the run's synthetic set, per diagnosis.

    python scripts/real_vs_synthetic.py RUN_DIR PREPARED_SITE [PREPARED_SITE ...]

PREPARED_SITE: a prepared site folder (``<cohort>/prepared/site-0/prepared``). Writes
``RUN_DIR/real_vs_synthetic.png``. In a simulation the operator holds every site's data;
in a deployment only a site can draw its own real half.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from g2i_models.plots import save_real_vs_synthetic
from preprocessing.dataset import load_site_dataset


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    run = Path(argv[0])
    images, labels = [], []
    for site in argv[1:]:
        ds = load_site_dataset(Path(site), "test")
        for i in range(len(ds)):
            item = ds[i]
            images.append(item["image"][:1])
            labels.append(int(item["label"]))
    with np.load(run / "synthetic" / "images.npz") as z:
        synthetic, synthetic_labels = torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
    out = save_real_vs_synthetic(
        torch.stack(images), torch.tensor(labels), synthetic.float(), synthetic_labels, run /
        "real_vs_synthetic.png"
    )
    print(f"real vs synthetic: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
