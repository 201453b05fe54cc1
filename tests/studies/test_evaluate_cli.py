"""g2i-evaluate: clear errors, and a run folder evaluated end to end."""

from __future__ import annotations

import json

from g2i_models.cli import train_main
from studies.evaluate_cli import main

from .test_study import TINY


def test_missing_model_is_a_clear_error(tmp_path, capsys) -> None:
    assert main([f"run_dir={tmp_path}", "data.source=synthetic"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "model") in err and "g2i-train" in err


def test_inception_without_weights_is_a_clear_error(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert train_main([*TINY, f"run_dir={run}"]) == 0
    missing = tmp_path / "inception.pth"
    args = [*TINY, f"run_dir={run}", "evaluation.feature_extractor=inception"]
    assert main([*args, f"evaluation.inception_weights={missing}"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(args) == 2
    assert "evaluation.inception_weights" in capsys.readouterr().err


def test_evaluate_a_run_folder(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert train_main([*TINY, f"run_dir={run}"]) == 0
    assert main([*TINY, f"run_dir={run}"]) == 0
    printed = capsys.readouterr().out
    assert "FID" in printed and "classifier (augmented)" in printed
    out = run / "evaluation"
    result = json.loads((out / "evaluation.json").read_text())
    assert set(result) >= {"image", "effect", "downstream", "memorisation", "feature_extractor"}
    # Every FID / KID number says which extractor made it.
    assert result["image"]["fid_kid"]["feature_extractor"] == result["feature_extractor"]
    assert result["feature_extractor"].startswith("in-domain")
    assert len(result["downstream"]["augmented"]["accuracy"]["values"]) == 2
    for name in ("samples.png", "real.png", "differences_generated.png", "apoe_effect.png"):
        assert (out / name).is_file(), name
