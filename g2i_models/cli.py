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
from g2i_models.panel import Panel, header_problem
from g2i_models.pipeline import GENERATE_BATCH_SIZE, G2IPipeline, generate
from g2i_models.plots import CLASS_NAMES, save_sample_grid
from preprocessing.errors import ModelInputError
from preprocessing.site_inputs import decode_text

TRAIN_USAGE = """usage: g2i-train [KEY=VALUE ...] [--help]

Train the centralized baseline (autoencoder, then the conditional LDM) through the training
core on the training split of data.root (one prepared site, a folder of them pooled, or a
cohort a federation prepared), and write run_dir/{model/, samples.png, real.png, ae_loss.csv,
ldm_loss.csv, metrics.json}.

Keys (Hydra overrides of the root config; `conf/` holds every key):
  data.root=DIR | data.source=synthetic     the data (synthetic: built-in test images)
  experiment=tiny|fed_tiny|paper            a preset (paper: 256x256, for a GPU)
  model.variant=g2i_plus|ldm_label|g2i|g2i_label_noattn|g2i_label_attn
  train.ae_epochs=N train.ldm_epochs=N train.max_steps_ae=N train.max_steps_ldm=N
  train.batch_size=N train.lr_ae=X train.lr_ldm=X train.ema=true|false
  privacy=none|dp_sgd                       DP-SGD through Opacus, with its accountant
  run_dir=DIR seed=N
"""


def setup_logging() -> None:
    """INFO logs of the project's console scripts, diffusers' own at ERROR."""
    # force: importing opacus already installed a root handler at WARNING.
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    diffusers_logging.set_verbosity_error()


def train_main(argv: Sequence[str] | None = None) -> int:
    """``g2i-train [hydra overrides...]``: train, then write the run folder (``run_dir``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(TRAIN_USAGE)
        return 0
    setup_logging()
    cfg = load_config(None, args)
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
        help="CSV, one subject per row of 0/1/2/3 values, optionally under a header of SNP "
        "names, checked against the model's panel (default: drawn from the allele "
        "frequencies stored with the model); rows are cycled",
    )
    parser.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++"], default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale"
    )
    parser.add_argument(
        "--genotype-guidance",
        type=float,
        default=None,
        help="the genotype's own guidance scale (default: the model's; a model trained with "
        "genotype dropout)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=GENERATE_BATCH_SIZE,
        help="images per sampler call (the images do not depend on it)",
    )
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def load_model_dir(model_dir: Path) -> G2IPipeline:
    """``G2IPipeline.from_pretrained`` with a message naming the folder when it is not one."""
    if not (model_dir / "model_index.json").is_file():
        hint = " (the run folder? pass RUN/model)" if (model_dir / "model").is_dir() else ""
        raise ModelInputError(
            f"not a model folder{hint}: no model_index.json; pass the model/ folder written "
            "by g2i-train or the federation",
            model_dir,
        )
    diffusers_logging.disable_progress_bar()  # one-line output on error
    try:
        return G2IPipeline.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelInputError(
            f"cannot load the model ({first}); is the folder complete?", model_dir
        ) from None
    finally:
        diffusers_logging.enable_progress_bar()


def read_genotype_rows(path: Path, n_snps: int | None, panel: Panel | None = None) -> torch.Tensor:
    """(n, n_snps) int64 genotypes from a CSV of 0/1/2/3 values, one subject per row.

    A first line that is not all numbers is a header of SNP names (``SNP`` or PLINK's
    ``SNP_ALLELE``); with the model's ``panel`` it must name the panel's SNPs in its order
    (and alleles, where given). UTF-8 with or without BOM, or latin-1.

    Raises:
        ModelInputError: a missing or empty file, a header without rows or not fitting the
            panel, a value outside 0/1/2/3, a row of the wrong length; each naming the line.
    """
    if not path.is_file():
        raise ModelInputError("genotype CSV not found", path)
    text, _ = decode_text(path)
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        raise ModelInputError(
            "empty file; write one subject per line of comma-separated 0/1/2/3 values", path
        )
    first = [v.strip() for v in lines[0][1].split(",")]
    if not all(v.lstrip("-").isdigit() for v in first):
        problem = None if panel is None else header_problem(panel, first)
        if problem is not None:
            raise ModelInputError(problem, path, lines[0][0])
        lines = lines[1:]  # a header of SNP names
        if not lines:
            raise ModelInputError(
                "only a header, no genotype rows; add one subject per line", path, 1
            )
    rows: list[list[int]] = []
    for n, line in lines:
        fields = [v.strip() for v in line.split(",")]
        bad = [v for v in fields if v not in ("0", "1", "2", "3")]
        if bad:
            raise ModelInputError(
                f"genotype value {bad[0]!r}; use 0, 1, 2 (risk-allele copies) or 3 (missing)",
                path,
                n,
            )
        if n_snps is not None and len(fields) != n_snps:
            raise ModelInputError(
                f"{len(fields)} values where the model has {n_snps} SNPs; give one value "
                "per SNP, in the model's panel order",
                path,
                n,
            )
        rows.append([int(v) for v in fields])
    return torch.tensor(rows, dtype=torch.int64)


def generate_main(argv: Sequence[str] | None = None) -> int:
    """``g2i-generate MODEL_DIR``: writes samples.png and samples.pt (images, genotypes,
    labels) to ``--out``. Bad input exits 2 with a one-line message."""
    args = _parse_generate(argv)
    diffusers_logging.set_verbosity_error()
    try:
        return _generate(args)
    except ModelInputError as err:
        print(f"g2i-generate: {err}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
    if args.per_class < 1:
        raise ModelInputError(f"--per-class must be >= 1, got {args.per_class}")
    pipe = load_model_dir(args.model_dir).to(get_device(args.device))
    num_classes = pipe.config.num_classes
    classes = list(range(num_classes)) if args.labels is None else args.labels
    wrong = [k for k in classes if not 0 <= k < num_classes]
    if wrong:
        raise ModelInputError(
            f"--labels {wrong} outside 0..{num_classes - 1} (0 CN, 1 MCI, 2 AD)", args.model_dir
        )
    labels = torch.tensor([k for k in classes for _ in range(args.per_class)])
    generator = torch.Generator().manual_seed(args.seed)
    if args.genotypes is not None:
        if pipe.snp_encoder is None:
            raise ModelInputError(
                "this model is label-only (no SNP encoder); drop --genotypes", args.model_dir
            )
        n_snps = int(pipe.snp_encoder.config.n_snps)
        rows = read_genotype_rows(args.genotypes, n_snps, pipe.config.get("panel"))
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
        batch_size=args.batch_size,
        sampler=args.sampler,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        genotype_guidance_scale=args.genotype_guidance,
        progress=True,
    ).cpu()
    args.out.mkdir(parents=True, exist_ok=True)
    save_sample_grid(images, labels, args.out / "samples.png", CLASS_NAMES[:num_classes])
    torch.save(
        {"images": images, "genotypes": genotypes, "labels": labels}, args.out / "samples.pt"
    )
    print(f"{len(images)} images written to {args.out}")
    return 0
