"""The one place that picks a device, seeds the RNGs and decides on mixed precision."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def get_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else CPU; any other value is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} requested but CUDA is not available; use 'auto'")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """bf16 on CUDA under ``"auto"``; None (fp32) on CPU, where bf16 autocast is slow."""
    if mode not in ("auto", "bf16", "no"):
        raise ValueError(f"mixed_precision must be 'auto', 'bf16' or 'no', got {mode!r}")
    if mode == "no" or (mode == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, mode: str = "auto") -> Iterator[None]:
    """Autocast context for the forward pass (a no-op when ``autocast_dtype`` is None)."""
    dtype = autocast_dtype(device, mode)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
