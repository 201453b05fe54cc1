"""``g2i-study``: the paper's comparison on the synthetic cohort, centralized vs federated,
with and without differential privacy.

    g2i-study                                  # the quick preset (CPU; data/cohort)
    g2i-study study=full out_dir=runs/study_full  # the paper's scale, for a GPU
    g2i-study study.variants=[g2i_label_attn] study.privacy=[none]   # a subset of cells

Each cell (model variant x mode x privacy) trains a model in its own run folder under
``out_dir/cells``: a federation of ``study.n_sites`` simulated sites with Flower's
Simulation Engine, or the centralized baseline on the pooled training splits of the same
prepared sites, given the same number of optimiser steps in total. Every model is then
scored by ``g2i_models.evaluation.evaluate_model`` with one shared feature extractor. The
study writes ``results.json``, ``table.md`` (the shapes of the paper's Tables 1 and 2 plus
our columns), ``summary.png`` and ``report.md`` (figures, loss curves, privacy ledgers).
A rerun skips finished cells.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf.loader import load_config, to_object
from conf.schema import StudyConfig
from g2i_models.baseline import train_centralized
from g2i_models.cli import setup_logging
from g2i_models.datasets import DataSourceError, load_split
from g2i_models.evaluation import to_jsonable
from g2i_models.features import build_extractor
from simulations.evaluate_cli import run_evaluation
from simulations.federation import FederationError, run_federation
from simulations.study_report import write_report, write_summary_plot, write_table

log = logging.getLogger("g2i_fed.study")
MODES = ("centralized", "federated")


@dataclass(frozen=True)
class Cell:
    """One trained model of the study."""

    variant: str
    mode: str
    privacy: str

    @property
    def name(self) -> str:
        return f"{self.mode}-{self.variant}-{self.privacy}"


def study_cells(study: StudyConfig) -> list[Cell]:
    """Privacy levels in turn (the comparison without DP is complete first), federated cells
    before centralized ones: the first federation prepares the sites' datasets that the
    centralized cells then pool."""
    for mode in study.modes:
        if mode not in MODES:
            raise ValueError(f"study.modes: unknown mode {mode!r}; use {list(MODES)}")
    order = sorted(study.modes, key=lambda m: m != "federated")
    return [Cell(v, m, p) for p in study.privacy for m in order for v in study.variants]


def cell_overrides(cell: Cell, study: StudyConfig, data_root: Path, run_dir: Path) -> list[str]:
    """The Hydra overrides that make one cell."""
    items = [
        *study.overrides,
        f"model.variant={cell.variant}",
        f"privacy={cell.privacy}",
        f"data.root={data_root}",
        f"run_dir={run_dir}",
        f"federation.min_sites={study.n_sites}",
    ]
    if cell.privacy != "none":
        items += list(study.dp_overrides)
    return items


def centralized_overrides(cfg: Any, n_sites: int) -> list[str]:
    """Give the centralized model the optimiser steps of the whole federation: every round's
    local epochs (so as many passes over the pooled data), and under a per-round step cap the
    sites' steps summed."""
    fed, train = cfg.federation, cfg.train
    items = [
        f"train.ae_epochs={fed.rounds_ae * train.ae_epochs}",
        f"train.ldm_epochs={fed.rounds_ldm * train.ldm_epochs}",
    ]
    if train.max_steps_ae > 0:
        items.append(f"train.max_steps_ae={fed.rounds_ae * train.max_steps_ae * n_sites}")
    if train.max_steps_ldm > 0:
        items.append(f"train.max_steps_ldm={fed.rounds_ldm * train.max_steps_ldm * n_sites}")
    return items


def train_cell(cell: Cell, study: StudyConfig, root: Path, out: Path, seed: int) -> dict:
    """Train one cell's model into ``out/cells/<name>``; training facts for the table."""
    run_dir = out / "cells" / cell.name
    overrides = [*cell_overrides(cell, study, root, run_dir), f"seed={seed}"]
    start = time.perf_counter()
    if cell.mode == "federated":
        metrics = run_federation(
            study.experiment,
            overrides,
            run_dir,
            study.n_sites,
            out / ".flwr",
            timeout=study.federation_timeout_s,
        )
        info = {
            "sites": metrics["sites"],
            "failures": metrics["failures"],
            "site_downstream": metrics.get("downstream"),
            "site_memorisation": metrics.get("memorisation"),
        }
        ledger = run_dir / "privacy_ledger.json"
        if ledger.is_file():
            info["privacy_ledger"] = json.loads(ledger.read_text())
    else:
        base = load_config(study.experiment, overrides)
        cfg = load_config(
            study.experiment, [*overrides, *centralized_overrides(base, study.n_sites)]
        )
        data = to_object(cfg.data)
        try:
            train_set, val_set = load_split(data, "train", seed), load_split(data, "val", seed)
        except DataSourceError as err:
            raise DataSourceError(
                f"{err}. The centralized cells pool the sites a federation prepared: keep "
                "'federated' in study.modes or run the quick start (bash run.sh) first"
            ) from err
        metrics = train_centralized(
            train_set,
            val_set,
            to_object(cfg.model),
            to_object(cfg.train),
            run_dir,
            seed,
            progress=False,
            privacy=to_object(cfg.privacy),
        )
        info = {"metrics": metrics}
    info["train_wall_s"] = time.perf_counter() - start
    (run_dir / "study_cell.json").write_text(json.dumps(to_jsonable(info), indent=2) + "\n")
    return info


def run_study(root_cfg: Any, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every cell; write results, table, plot and report."""
    study: StudyConfig = to_object(root_cfg.study)
    out = Path(root_cfg.out_dir).resolve()
    data_root = Path(root_cfg.data_root).resolve()
    seed = int(root_cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    cells = study_cells(study)
    results_path = out / "results.json"
    results: dict[str, Any] = (
        json.loads(results_path.read_text()) if root_cfg.resume and results_path.is_file() else {}
    )
    extractor = None
    for i, cell in enumerate(cells, 1):
        done = results.get(cell.name, {})
        if "evaluation" in done:
            log.info("[%d/%d] %s: done earlier, skipped", i, len(cells), cell.name)
            continue
        log.info("[%d/%d] %s: training", i, len(cells), cell.name)
        entry: dict[str, Any] = {
            "variant": cell.variant,
            "mode": cell.mode,
            "privacy": cell.privacy,
        }
        try:
            entry["training"] = train_cell(cell, study, data_root, out, seed)
            run_dir = out / "cells" / cell.name
            overrides = [*cell_overrides(cell, study, data_root, run_dir), f"seed={seed}"]
            cfg = load_config(study.experiment, overrides)
            if extractor is None:
                extractor = _shared_extractor(cfg, out, seed, progress)
            log.info("[%d/%d] %s: evaluating", i, len(cells), cell.name)
            entry["evaluation"] = to_jsonable(
                run_evaluation(cfg, run_dir / "evaluation", progress, extractor=extractor)
            )
        except (FederationError, DataSourceError, RuntimeError, ValueError) as err:
            # One failed cell is recorded and the study goes on.
            log.error("%s failed: %s", cell.name, err)
            entry["error"] = str(err)
        results[cell.name] = entry
        results_path.write_text(json.dumps(to_jsonable(results), indent=2) + "\n")
    write_table(results, out / "table.md")
    write_summary_plot(results, out / "summary.png")
    write_report(results, root_cfg, out)
    return results


def _shared_extractor(cfg: Any, out: Path, seed: int, progress: bool) -> Any:
    """One feature extractor for every cell, so their FID / KID are comparable: Inception-v3
    from its weights file, a saved in-domain extractor, or one trained once on the pooled
    training split and kept in ``out/feature_extractor``."""
    ev = to_object(cfg.evaluation)
    saved = out / "feature_extractor"
    if ev.feature_extractor == "in_domain" and not ev.in_domain_dir and saved.is_dir():
        ev.in_domain_dir = str(saved)
    train_set = load_split(to_object(cfg.data), "train", seed)
    return build_extractor(ev, train_set, out, seed=seed, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    setup_logging()
    cfg = load_config(config_name="study", overrides=args)
    if "federated" in cfg.study.modes and not (Path(cfg.data_root) / "cohort.json").is_file():
        print(
            f"g2i-study: {cfg.data_root} is not a cohort (no cohort.json); make one with "
            f"g2i-simulate output_dir={cfg.data_root}",
            file=sys.stderr,
        )
        return 2
    results = run_study(cfg)
    failed = [name for name, r in results.items() if "error" in r]
    print((Path(cfg.out_dir) / "table.md").read_text())
    print(f"report: {Path(cfg.out_dir) / 'report.md'}")
    if failed:
        print(f"g2i-study: {len(failed)} cell(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0
