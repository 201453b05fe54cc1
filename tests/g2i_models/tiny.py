"""Tiny CPU configs shared by the model tests (16x16 images, 4x4 latents)."""

from __future__ import annotations

from conf.schema import ModelConfig, TrainConfig

N_SNPS = 12
IMAGE_SIZE = 16


def tiny_model_config(**overrides: object) -> ModelConfig:
    """A model small enough for CPU tests: 16x16 images, 4x4 latents."""
    base: dict[str, object] = {
        "ae_channels": [8, 16, 16],
        "ae_norm_groups": 4,
        "latent_channels": 3,
        "unet_channels": [16, 32],
        "unet_norm_groups": 4,
        "unet_attention_levels": [False, True],
        "unet_head_dim": 8,
        "snp_embed_dim": 16,
        "snp_depth": 1,
        "snp_heads": 2,
        "sample_steps": 4,
    }
    base.update(overrides)
    return ModelConfig(**base)


def tiny_train_config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {"batch_size": 4, "ae_epochs": 1, "ldm_epochs": 1}
    base.update(overrides)
    return TrainConfig(**base)
