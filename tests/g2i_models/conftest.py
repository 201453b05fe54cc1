"""Fixtures shared by the model tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from conf.schema import ModelConfig
from tests.g2i_models.tiny import IMAGE_SIZE, N_SNPS, tiny_model_config


@pytest.fixture
def model_config() -> Callable[..., ModelConfig]:
    return tiny_model_config


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Four items in the dataset format (images, genotypes, labels)."""
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(4, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        "genotypes": torch.randint(0, 4, (4, N_SNPS), generator=g),
        "label": torch.tensor([0, 1, 2, 1]),
    }
