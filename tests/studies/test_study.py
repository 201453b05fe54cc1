"""g2i-study: cells, equal optimiser steps, the tables, and a small end-to-end study."""

from __future__ import annotations

import json

import pytest

from conf import load_config, to_object
from studies.study import Cell, centralized_overrides, main, study_cells
from studies.study_report import cell_row, epsilon_of, table_markdown

from ..g2i_models.test_cli import TINY as CLI_TINY

# The CLI tests' tiny model at 32 px (the in-domain extractor and MS-SSIM need room), with a
# CPU-seconds evaluation.
TINY = [
    *CLI_TINY,
    "data.image_size=32",
    "evaluation.samples_per_class=4",
    "evaluation.in_domain_epochs=1",
    "evaluation.effect_samples=2",
    "evaluation.effect_bootstrap=20",
    "evaluation.classifier_per_class=8",
    "evaluation.classifier_epochs=1",
    "evaluation.classifier_seeds=[0,1]",
    "evaluation.diversity_pairs=10",
    "evaluation.kid_subset_size=4",
]


def test_cells_cover_the_grid_without_dp_first_federated_first() -> None:
    study = to_object(load_config(config_name="study").study)
    cells = study_cells(study)
    assert len(cells) == 4 * 2 * 2 and len(set(cells)) == 16
    assert [c.mode for c in cells[:8]] == ["federated"] * 4 + ["centralized"] * 4
    assert all(c.privacy == "none" for c in cells[:8])
    assert Cell("g2i", "centralized", "dp_sgd") in cells
    study.modes = ["centralised"]
    with pytest.raises(ValueError, match="unknown mode 'centralised'"):
        study_cells(study)


def test_centralized_cells_get_the_federations_optimiser_steps() -> None:
    cfg = load_config(
        "fed_tiny",
        "federation.rounds_ae=2 federation.rounds_ldm=3 train.ae_epochs=4 train.ldm_epochs=5 "
        "train.max_steps_ae=10 train.max_steps_ldm=0",
    )
    # Equal samples per site: AE 2 rounds x 10 capped steps (x 4 local epochs uncapped);
    # LDM uncapped, 3 rounds x 5 local epochs.
    assert centralized_overrides(cfg) == [
        "train.ae_epochs=8",
        "train.ldm_epochs=15",
        "train.max_steps_ae=20",
    ]


def _entry(variant: str, privacy: str, acc: float) -> dict:
    arm = {
        "accuracy": {"mean": acc, "sd": 0.01},
        "macro_precision": {"mean": 0.4, "sd": 0.0},
        "macro_recall": {"mean": 0.5, "sd": 0.0},
        "macro_f1": {"mean": 0.45, "sd": 0.02},
    }
    return {
        "variant": variant,
        "mode": "federated",
        "privacy": privacy,
        "training": {
            "train_wall_s": 12.0,
            "privacy_ledger": [{"epsilon": 1.5}, {"epsilon": 2.5}] if privacy != "none" else [],
        },
        "evaluation": {
            "feature_extractor": "in-domain:x",
            "image": {
                "against_real": {"psnr": 18.25},
                "fid_kid": {"fid": 40.5, "kid_mean": 0.0123},
                "diversity": {"ms_ssim": 0.61, "ssim": 0.52},
            },
            "effect": {"ratio": 0.8, "ratio_ci_low": 0.5, "ratio_ci_high": 1.1},
            "memorisation": {"pixel": {"fraction_flagged": 0.0}},
            "downstream": {
                "real": {**arm, "accuracy": {"mean": 0.5313, "sd": 0.02}},
                "augmented": arm,
            },
        },
    }


def test_table_has_the_papers_columns_and_ours() -> None:
    results = {
        "a": _entry("g2i_label_attn", "none", 0.6146),
        "b": _entry("ldm_label", "dp_sgd", 0.55),
        "c": {"variant": "g2i", "mode": "centralized", "privacy": "none", "error": "boom"},
    }
    md = table_markdown(results)
    assert "| G2I-l w/ Att. | federated | none | 18.25 | 40.50 | 0.610 | 0.520 | 0.0123 " in md
    assert "0.80 [0.50, 1.10]" in md
    assert "| Original images | - | - | 53.13 ± 2.00 |" in md
    assert "| + G2I-l w/ Att. | federated | none | 61.46 ± 1.00 | 40.00 ± 0.00 |" in md
    assert "failed: boom" in md
    assert epsilon_of(results["b"]) == 2.5 and epsilon_of(results["a"]) is None
    assert cell_row(results["b"])["model"] == "LDM (label)"


def test_a_small_centralized_study_end_to_end(tmp_path) -> None:
    out = tmp_path / "study"
    overrides = "[" + ",".join(f"'{o}'" for o in TINY) + "]"
    args = [
        f"study.overrides={overrides}",
        "study.modes=[centralized]",
        "study.variants=[ldm_label,g2i_label_attn]",
        "study.privacy=[none,dp_sgd]",
        f"out_dir={out}",
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    summary = results.pop("summary")
    grid = [(v, p) for v in ("g2i_label_attn", "ldm_label") for p in ("dp_sgd", "none")]
    assert sorted(results) == [f"centralized-{v}-{p}" for v, p in grid]
    assert sorted(summary) == [f"{v}/centralized/{p}" for v, p in grid]
    for name, entry in results.items():
        ev = entry["evaluation"]
        assert ev["image"]["fid_kid"]["fid"] >= 0, name
        assert (out / "cells" / name / "evaluation" / "evaluation.json").is_file()
        assert (out / "cells" / name / "model" / "model_index.json").is_file()
        assert (epsilon_of(entry) is not None) == (entry["privacy"] == "dp_sgd")
    # The label-only model cannot be conditioned on APOE; the genotype model can.
    assert "skipped" in results["centralized-ldm_label-none"]["evaluation"]["effect"]
    assert "slope" in results["centralized-g2i_label_attn-none"]["evaluation"]["effect"]
    # One shared extractor, trained once.
    names = {e["evaluation"]["feature_extractor"] for e in results.values()}
    assert len(names) == 1 and (out / "feature_extractor" / "config.json").is_file()
    table = (out / "table.md").read_text()
    assert table.count("| centralized |") >= 4
    report = (out / "report.md").read_text()
    assert "![summary](summary.png)" in report and (out / "summary.png").is_file()
    # The grid's cells have folders, and nothing outside the grid (g2i, federated) was trained.
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(results)
    # A rerun finds every cell done and trains nothing.
    mtime = (out / "cells" / "centralized-ldm_label-none" / "model" / "model_index.json").stat()
    assert main(args) == 0
    after = (out / "cells" / "centralized-ldm_label-none" / "model" / "model_index.json").stat()
    assert after.st_mtime_ns == mtime.st_mtime_ns


def test_federated_study_needs_a_cohort(tmp_path, capsys) -> None:
    assert main([f"data_root={tmp_path}", "study.modes=[federated]"]) == 2
    assert "g2i-simulate" in capsys.readouterr().err
