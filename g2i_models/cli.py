"""Console scripts: ``g2i-train`` (centralized baseline) and ``g2i-generate``.

``g2i-train`` takes Hydra overrides of the root config, e.g.
``g2i-train model=paper train.batch_size=4`` or ``g2i-train data.source=synthetic``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from conf.loader import load_config, to_object
from g2i_models.baseline import train_centralized
from g2i_models.datasets import DataSourceError, load_datasets
from g2i_models.device import get_device
from g2i_models.pipeline import G2IPipeline, generate
from g2i_models.plots import CLASS_NAMES, save_sample_grid


def setup_logging() -> None:
    """INFO logs of the project's console scripts, diffusers' own at ERROR."""
    # force: importing opacus already installed a root handler at WARNING.
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    diffusers_logging.set_verbosity_error()


def train_main(argv: Sequence[str] | None = None) -> int:
    """``g2i-train [hydra overrides...]``: train, then write the run folder (``run_dir``)."""
    setup_logging()
    cfg = load_config(None, list(sys.argv[1:] if argv is None else argv))
    try:
        train_set, val_set = load_datasets(to_object(cfg.data), seed=cfg.seed)
    except DataSourceError as err:
        print(f"g2i-train: {err}", file=sys.stderr)
        return 2
    metrics = train_centralized(
        train_set,
        val_set,
        to_object(cfg.model),
        to_object(cfg.train),
        cfg.run_dir,
        cfg.seed,
        privacy=to_object(cfg.privacy),
    )
    print(json.dumps(metrics, indent=2))
    print(f"model and figures written to {cfg.run_dir}")
    return 0


def _parse_generate(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="g2i-generate", description="Generate slices from a saved G2I model folder."
    )
    parser.add_argument("model_dir", type=Path, help="folder written by g2i-train (run/model)")
    parser.add_argument("--out", type=Path, default=Path("generated"), help="output folder")
    parser.add_argument("--per-class", type=int, default=8, help="images per diagnosis")
    parser.add_argument("--labels", type=int, nargs="*", default=None, help="classes (all)")
    parser.add_argument(
        "--genotypes",
        type=Path,
        default=None,
        help="CSV, one subject per row of 0/1/2/3 values (default: drawn from the allele "
        "frequencies stored with the model); rows are cycled",
    )
    parser.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++"], default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def generate_main(argv: Sequence[str] | None = None) -> int:
    """``g2i-generate MODEL_DIR``: writes samples.png and samples.pt (images, genotypes,
    labels) to ``--out``."""
    args = _parse_generate(argv)
    diffusers_logging.set_verbosity_error()
    pipe = G2IPipeline.from_pretrained(args.model_dir).to(get_device(args.device))
    num_classes = pipe.config.num_classes
    classes = list(range(num_classes)) if args.labels is None else args.labels
    labels = torch.tensor([k for k in classes for _ in range(args.per_class)])
    generator = torch.Generator().manual_seed(args.seed)
    if args.genotypes is not None:
        rows = torch.tensor(
            [
                [int(v) for v in line.split(",")]
                for line in args.genotypes.read_text().splitlines()
                if line.strip()
            ]
        )
        genotypes = rows[torch.arange(len(labels)) % len(rows)]
    elif pipe.snp_encoder is not None:
        genotypes = pipe.sample_genotypes(len(labels), generator)
    else:
        genotypes = None
    images = generate(
        pipe,
        genotypes,
        labels,
        seed=args.seed,
        sampler=args.sampler,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        progress=True,
    ).cpu()
    args.out.mkdir(parents=True, exist_ok=True)
    save_sample_grid(images, labels, args.out / "samples.png", CLASS_NAMES[:num_classes])
    torch.save(
        {"images": images, "genotypes": genotypes, "labels": labels}, args.out / "samples.pt"
    )
    print(f"{len(images)} images written to {args.out}")
    return 0
