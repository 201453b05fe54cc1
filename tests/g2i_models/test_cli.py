"""End to end: g2i-train on the synthetic test data, then g2i-generate from its folder."""

import json

import pytest
import torch

from g2i_models.cli import generate_main, train_main

TINY = [
    "data.source=synthetic",
    "data.image_size=16",
    "model.ae_channels=[8,16,16]",
    "model.ae_norm_groups=4",
    "model.unet_channels=[16,32]",
    "model.unet_norm_groups=4",
    "model.unet_attention_levels=[false,true]",
    "model.snp_embed_dim=16",
    "model.snp_depth=1",
    "model.snp_heads=2",
    "model.sample_steps=2",
    "train.max_steps_ae=2",
    "train.max_steps_ldm=2",
    "train.samples_per_class=2",
    "train.scale_batches=2",
]


def test_train_then_generate(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert train_main([*TINY, f"run_dir={run}"]) == 0
    for name in ("samples.png", "real.png", "ae_loss.csv", "ae_loss.png", "ldm_loss.csv"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ae_steps"] == 2 and metrics["latent_scale_factor"] > 0
    panel = json.loads((run / "model" / "model_index.json").read_text())["panel"]
    # The synthetic test data's columns: APOE e4 copies, then 19 unnamed SNPs.
    assert panel["snp_names"] == ["APOE_e4", *(f"snp{i}" for i in range(1, 20))]
    assert panel["alleles"] == ["e4", *[None] * 19]

    out = tmp_path / "gen"
    assert generate_main([str(run / "model"), "--out", str(out), "--per-class", "1"]) == 0
    saved = torch.load(out / "samples.pt")
    assert saved["images"].shape == (3, 1, 16, 16)
    assert saved["genotypes"].shape == (3, 20)
    assert (out / "samples.png").is_file()


def test_missing_site_data_is_a_clear_error(tmp_path, capsys) -> None:
    assert train_main([f"data.root={tmp_path}", f"run_dir={tmp_path / 'run'}"]) == 2
    assert "data.source=synthetic" in capsys.readouterr().err


def test_centralized_dp_sgd_accounts_both_phases(tmp_path) -> None:
    run = tmp_path / "run"
    args = [*TINY, "privacy=dp_sgd", "privacy.noise_multiplier=1.1", f"run_dir={run}"]
    assert train_main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    ledger = json.loads((run / "privacy_ledger.json").read_text())["history"]
    # One accountant: the autoencoder's and the LDM's 2 steps each, at the configured noise
    # (the accountant merges runs with equal noise and sample rate).
    assert sum(h[2] for h in ledger) == 4 and all(h[0] == 1.1 for h in ledger)
    assert metrics["dp_steps"] == 4 and metrics["dp_noise_multiplier"] == 1.1
    assert 0 < metrics["dp_epsilon"] < float("inf")


def test_centralized_refuses_central_dp(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs a federation"):
        train_main([*TINY, "privacy=central_dp", f"run_dir={tmp_path}"])


def test_help_prints_usage_and_trains_nothing(tmp_path, capsys, monkeypatch) -> None:
    from g2i_models.pretrain import main as pretrain_main

    monkeypatch.chdir(tmp_path)
    assert train_main(["--help"]) == 0
    assert "usage: g2i-train" in capsys.readouterr().out
    assert pretrain_main(["-h"]) == 0
    assert "usage: g2i-pretrain" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
