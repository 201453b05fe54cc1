"""What float16 weights on the wire cost: a run's models scored with their weights as saved
(float32) and after a float16 round trip, on the prepared sites' validation splits.

    python benchmarks/wire_dtype_quality.py RUN_DIR PREPARED_SITE [PREPARED_SITE ...]

Autoencoder: validation PSNR / SSIM / L1; LDM: validation noise-prediction MSE (seeded).
Writes ``benchmarks/results/wire_dtype_quality.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader

from g2i_models.pipeline import G2IPipeline
from g2i_models.train import evaluate_autoencoder, evaluate_ldm
from preprocessing.dataset import load_site_dataset


def _halved(model: torch.nn.Module) -> None:
    """Every floating parameter and buffer through float16 and back, as the wire carries it."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().float())


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    torch.manual_seed(0)
    run = Path(argv[0])
    val = ConcatDataset([load_site_dataset(Path(p), "val") for p in argv[1:]])
    loader = DataLoader(val, batch_size=8)
    device = torch.device("cpu")
    rows = {}
    for name in ("float32", "float16 round trip"):
        pipe = G2IPipeline.from_pretrained(str(run / "model"))
        if name != "float32":
            _halved(pipe.vae)
            _halved(pipe.denoiser)
        ae = evaluate_autoencoder(pipe.vae, loader, device)
        ldm = evaluate_ldm(pipe.denoiser, pipe.vae, pipe.scheduler, loader, device, seed=0)
        rows[name] = {f"ae-{k}": v for k, v in ae.items()}
        rows[name].update({f"ldm-{k}": v for k, v in ldm.items()})
        print(name, json.dumps(rows[name]))
    out = Path("benchmarks/results/wire_dtype_quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(run), "n_val": len(val), "load_average": os.getloadavg(),
                               "rows": rows}, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
