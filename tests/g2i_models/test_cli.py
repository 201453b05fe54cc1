"""End to end: g2i-train on the synthetic test data, then g2i-generate from its folder."""

import json

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
    assert (run / "model" / "model_index.json").is_file()

    out = tmp_path / "gen"
    assert generate_main([str(run / "model"), "--out", str(out), "--per-class", "1"]) == 0
    saved = torch.load(out / "samples.pt")
    assert saved["images"].shape == (3, 1, 16, 16)
    assert saved["genotypes"].shape == (3, 20)
    assert (out / "samples.png").is_file()


def test_missing_site_data_is_a_clear_error(tmp_path, capsys) -> None:
    assert train_main([f"data.root={tmp_path}", f"run_dir={tmp_path / 'run'}"]) == 2
    assert "data.source=synthetic" in capsys.readouterr().err
