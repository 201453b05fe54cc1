"""``g2i-study``: the paper's comparison on the synthetic cohort, centralized vs federated,
with and without differential privacy.

    g2i-study                                  # the quick preset (CPU; data/cohort)
    g2i-study study=cpu data_root=DIR out_dir=DIR # LDM (label) and G2I+ on any cohort, CPU
    g2i-study study=full out_dir=runs/study_full  # the paper's scale, for a GPU
    g2i-study study.variants=[g2i_label_attn] study.privacy=[none]   # a subset of cells

Each cell (model variant x mode x privacy) trains a model in its own run folder under
``out_dir/cells``: a federation of ``study.n_sites`` simulated sites with Flower's
Simulation Engine (mode ``federated``), or the centralized baseline on the pooled training
splits of the same prepared sites, through the same training core. ``centralized`` gets as
many optimiser steps as each site took over all rounds (equal samples seen per site, same
batch size); ``centralized_walltime`` gets, per phase, the wall time the federation's
training took (per round the slowest site's local run, summed over rounds), with no step
cap. The federated cell of a variant trains first; the centralized cells pool the datasets
it prepared. Every model is then
scored by ``g2i_eval.evaluation.evaluate_model`` with one shared feature extractor. The
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
from g2i_eval.evaluation import to_jsonable
from g2i_eval.features import build_extractor
from g2i_models.baseline import train_centralized
from g2i_models.cli import setup_logging
from g2i_models.datasets import DataSourceError, load_split
from studies.evaluate_cli import run_evaluation
from studies.federation import FederationError, run_federation
from studies.study_report import write_report, write_summary_plot, write_table

log = logging.getLogger("g2i_fed.study")
MODES = ("centralized", "federated", "centralized_walltime")


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
    order = sorted(study.modes, key=lambda m: MODES.index(m) if m != "federated" else -1)
    fine_tune = "privacy.trainable=conditioning" in study.dp_overrides
    if fine_tune and any(p != "none" for p in study.privacy) and not study.pretrained:
        raise ValueError(
            "the DP cells fine-tune the conditioning path of a public model "
            "(privacy.trainable=conditioning) but study.pretrained is empty; make one with "
            "`g2i-pretrain data.root=PUBLIC run_dir=DIR` and pass study.pretrained=DIR/model"
        )
    return [
        Cell(v, m, p)
        for p in study.privacy
        for m in order
        for v in study.variants
        if p == "none" or _dp_cell(study, m, v)
    ]


def _dp_cell(study: StudyConfig, mode: str, variant: str) -> bool:
    """Whether (mode, variant) gets DP cells: ``study.dp_modes`` / ``dp_variants`` (empty =
    all)."""
    return (not study.dp_modes or mode in study.dp_modes) and (
        not study.dp_variants or variant in study.dp_variants
    )


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
        if study.pretrained:
            items.append(f"model.pretrained={Path(study.pretrained).resolve()}")
    return items


def centralized_overrides(cfg: Any) -> list[str]:
    """Equal samples seen per site: the centralized model takes as many optimiser steps (of
    the same batch size) as one site took over all rounds: every round's local epochs, and
    under a per-round step cap every round's capped steps."""
    fed, train = cfg.federation, cfg.train
    items = [
        f"train.ae_epochs={fed.rounds_ae * train.ae_epochs}",
        f"train.ldm_epochs={fed.rounds_ldm * train.ldm_epochs}",
    ]
    if train.max_steps_ae > 0:
        items.append(f"train.max_steps_ae={fed.rounds_ae * train.max_steps_ae}")
    if train.max_steps_ldm > 0:
        items.append(f"train.max_steps_ldm={fed.rounds_ldm * train.max_steps_ldm}")
    return items


def federated_train_seconds(run_dir: Path) -> dict[str, float]:
    """Per phase, the federation's training wall time: each round's slowest site's local run
    (the sites train in parallel), summed over the rounds of ``rounds.jsonl``."""
    path = run_dir / "rounds.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the federated cell has no round log to time")
    totals = {"ae": 0.0, "ldm": 0.0}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        seconds = [float(m.get("seconds", 0.0)) for m in r.get("site_metrics", {}).values()]
        if r.get("phase") in totals and seconds:
            totals[r["phase"]] += max(seconds)
    return totals


def walltime_overrides(cfg: Any, fed_run_dir: Path) -> list[str]:
    """Equal wall time: the federation's per-phase training time as the centralized run's time
    caps, epochs large enough that the time, not the data, ends each phase."""
    seconds = federated_train_seconds(fed_run_dir)
    return [
        f"train.max_seconds_ae={seconds['ae']:.1f}",
        f"train.max_seconds_ldm={seconds['ldm']:.1f}",
        "train.max_steps_ae=0",
        "train.max_steps_ldm=0",
        "train.ae_epochs=100000",
        "train.ldm_epochs=100000",
    ]


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
        info["train_seconds"] = federated_train_seconds(run_dir)
        info["condition_use"] = _last_round_condition_use(run_dir)
    else:
        base = load_config(study.experiment, overrides)
        extra = centralized_overrides(base)
        if cell.mode == "centralized_walltime":
            fed_dir = out / "cells" / Cell(cell.variant, "federated", cell.privacy).name
            extra += walltime_overrides(base, fed_dir)
        cfg = load_config(study.experiment, [*overrides, *extra])
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
    results.pop("summary", None)
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
    summary = study_summary(results)
    results_path.write_text(
        json.dumps(to_jsonable({**results, "summary": summary}), indent=2) + "\n"
    )
    # The table, plot and report read cells only; the summary is not one.
    write_table(results, out / "table.md", summary)
    write_summary_plot(results, out / "summary.png")
    write_report(results, root_cfg, out)
    return {**results, "summary": summary}


def _last_round_condition_use(run_dir: Path) -> dict[str, float] | None:
    """Mean over sites of the shuffled-condition deltas the sites measured on the global LDM
    of the last round (``val-shuffle-*`` in ``rounds.jsonl``)."""
    path = run_dir / "rounds.jsonl"
    if not path.is_file():
        return None
    ldm = [json.loads(x) for x in path.read_text().splitlines() if '"ldm"' in x]
    if not ldm:
        return None
    sites = ldm[-1].get("site_metrics", {}).values()
    out = {}
    for key in ("shuffle-e4", "shuffle-genotypes", "shuffle-dx"):
        values = [m[f"val-{key}"] for m in sites if f"val-{key}" in m]
        if values:
            out[key.replace("-", "_")] = sum(values) / len(values)
    return out or None


def cell_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one evaluated cell (``results.json``'s ``summary``)."""
    ev = entry.get("evaluation", {})
    effect = ev.get("effect", {})
    paired = effect.get("paired", {})
    down = ev.get("downstream", {})
    gain = down.get("gain_paired", {}).get("accuracy", {})
    fid = ev.get("image", {}).get("fid_kid", {}).get("fid")
    return {
        "e4_ratio": paired.get("ratio"),
        "e4_ci": [paired.get("ratio_ci_low"), paired.get("ratio_ci_high")]
        if paired
        else None,
        "e4_steps": effect.get("steps"),
        "e4_true_slope": effect.get("true_slope"),
        "e4_real_slope": effect.get("real", {}).get("slope"),
        "e4_real_ci": [effect.get("real", {}).get("ci_low"), effect.get("real", {}).get("ci_high")]
        if "real" in effect
        else None,
        **_within_dx(paired, effect.get("real", {}).get("within_diagnosis")),
        **_attainable(paired, effect.get("truth") or {}),
        "fid": fid,
        "dx_area_mm2": ev.get("dx_area_mm2", {}).get("generated"),
        "dx_area_mm2_real": ev.get("dx_area_mm2", {}).get("real"),
        "accuracy_real": down.get("real", {}).get("accuracy", {}).get("mean"),
        "accuracy_augmented": down.get("augmented", {}).get("accuracy", {}).get("mean"),
        "accuracy_synthetic_only": down.get("synthetic", {}).get("accuracy", {}).get("mean"),
        "macro_f1_real": down.get("real", {}).get("macro_f1", {}).get("mean"),
        "gain_ci": gain.get("ci"),
        "memorised": ev.get("memorisation", {}).get("pixel", {}).get("fraction_flagged"),
        "train_wall_s": entry.get("training", {}).get("train_wall_s"),
        "condition_use": _condition_use(entry),
    }


def _attainable(paired: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """The e4 ratio a perfect generator would reach on this cohort (at a fixed diagnosis,
    ``simulations.truth_effects.attainable_e4_effect``) and the cell's ratio over it; and the
    same as the morphometry reads it: a perfect generator's images are measured by
    ``ventricle_area``, which sees ``calibration.ratio`` (0.86 on the template) of a true area
    change, while the true slope is the template's exact area change, so through the
    measurement a perfect generator shows the product of the two."""
    attainable, calibration = truth.get("attainable"), truth.get("calibration") or {}
    out: dict[str, Any] = dict.fromkeys(
        (
            "e4_ratio_attainable",
            "e4_ratio_vs_attainable",
            "e4_ratio_attainable_measured",
            "e4_ratio_vs_attainable_measured",
        )
    )
    if not attainable or not paired or paired.get("ratio") is None:
        return out
    ideal = attainable["ratio_at_fixed_dx"]
    out.update(e4_ratio_attainable=ideal, e4_ratio_vs_attainable=paired["ratio"] / ideal)
    if calibration.get("ratio"):
        read = ideal * float(calibration["ratio"])
        out.update(
            e4_ratio_attainable_measured=read,
            e4_ratio_vs_attainable_measured=paired["ratio"] / read,
        )
    return out


def _within_dx(paired: dict[str, Any], within: dict[str, Any] | None) -> dict[str, Any]:
    """The real images' e4 slope within diagnoses, and the generated (paired, at a fixed
    diagnosis) slope over it: the like-for-like ratio for a diagnosis-conditioned model."""
    if not within or not paired or not within.get("slope"):
        return {"e4_real_within_dx_slope": None, "e4_ratio_real_within_dx": None}
    return {
        "e4_real_within_dx_slope": within["slope"],
        "e4_real_within_dx_ci": [within["ci_low"], within["ci_high"]],
        "e4_ratio_real_within_dx": paired["slope"] / within["slope"],
    }


def _condition_use(entry: dict[str, Any]) -> dict[str, float] | None:
    """Shuffled-condition loss deltas: the centralized model's, or the federated model's last
    LDM round at each site (mean over sites)."""
    training = entry.get("training", {})
    metrics = training.get("metrics", {})
    keys = ("shuffle_e4", "shuffle_genotypes", "shuffle_dx")
    if metrics:
        got = {k: metrics.get(f"ldm_val_{k}") for k in keys}
        return got if any(v is not None for v in got.values()) else None
    return training.get("condition_use")


def study_summary(results: dict[str, Any]) -> dict[str, Any]:
    """``"<variant>/<mode>/<privacy>"`` -> ``cell_summary`` for every evaluated cell."""
    return {
        f"{r['variant']}/{r['mode']}/{r['privacy']}": cell_summary(r)
        for name, r in results.items()
        if name != "summary" and isinstance(r, dict) and "evaluation" in r
    }


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
