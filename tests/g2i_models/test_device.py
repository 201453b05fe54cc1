"""The device helper: autocast dtype selection, loss scaling, channels-last and
torch.compile with its eager fallback, on tiny CPU models."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from g2i_models import device as device_mod
from g2i_models.autoencoder import build_autoencoder
from g2i_models.datasets import SyntheticSliceDataset
from g2i_models.device import (
    autocast_dtype,
    compile_with_fallback,
    heavy_submodules,
    prepare_for_training,
    prepare_models,
)
from g2i_models.local_training import train_local
from g2i_models.train import grad_scaler
from g2i_models.unet import build_denoiser
from tests.g2i_models.tiny import IMAGE_SIZE, N_SNPS, tiny_model_config, tiny_train_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def fresh_log_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "_logged", set())


@pytest.mark.parametrize(
    ("device", "mode", "bf16_ok", "expected"),
    [
        (CPU, "auto", True, None),
        (CPU, "no", True, None),
        (CPU, "bf16", True, torch.bfloat16),
        (CUDA, "auto", True, torch.bfloat16),
        (CUDA, "auto", False, torch.float16),
        (CUDA, "fp16", True, torch.float16),
        (CUDA, "no", True, None),
    ],
)
def test_autocast_dtype(monkeypatch, device, mode, bf16_ok, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert autocast_dtype(device, mode) == expected


def test_unknown_mixed_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="mixed_precision"):
        autocast_dtype(CPU, "fp8")


def test_loss_is_scaled_under_fp16_only() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    assert grad_scaler(CPU, "fp16", opt).is_enabled()
    assert not grad_scaler(CPU, "bf16", opt).is_enabled()
    assert not grad_scaler(CPU, "auto", opt).is_enabled()


def test_heavy_submodules_are_the_networks_that_training_calls() -> None:
    cfg = tiny_model_config()
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
    assert heavy_submodules(ae) == [ae.encoder, ae.decoder]
    assert heavy_submodules(den) == [den.unet]
    lin = nn.Linear(2, 2)
    assert heavy_submodules(lin) == [lin]


def _broken_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
    raise RuntimeError("no C++ compiler here")


def test_failed_compilation_falls_back_to_eager_logged_once(caplog) -> None:
    torch.manual_seed(0)
    den = build_denoiser(tiny_model_config(), N_SNPS, IMAGE_SIZE // 4)
    z = torch.randn(2, 3, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    t, g, y = torch.tensor([3, 500]), torch.randint(0, 3, (2, N_SNPS)), torch.tensor([0, 2])
    expected = den(z, t, g, y)
    keys = list(den.state_dict())
    prepare_models([den], channels_last=True, compile=True, backend=_broken_backend)
    with caplog.at_level(logging.WARNING, logger="g2i_models.device"):
        first, second = den(z, t, g, y), den(z, t, g, y)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    fallbacks = [r for r in caplog.records if "running eager" in r.getMessage()]
    assert len(fallbacks) == 1 and "no C++ compiler" in fallbacks[0].getMessage()
    assert list(den.state_dict()) == keys  # no _orig_mod. prefix
    assert all(p.is_contiguous() for p in den.parameters())
    # An error of the caller's own (here a wrong shape) still surfaces.
    with pytest.raises(RuntimeError):
        den(torch.randn(2, 5, 4, 4), t, g, y)


def test_compiled_module_matches_eager_and_is_compiled_once() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 1, 3))
    x = torch.randn(2, 1, 8, 8)
    expected = net(x)
    compile_with_fallback(net, backend="eager")
    forward = net.forward
    compile_with_fallback(net, backend="eager")
    assert net.forward is forward
    torch.testing.assert_close(net(x), expected)


def test_dp_sgd_leaves_the_models_eager(caplog) -> None:
    net = nn.Linear(2, 2)
    forward = net.forward
    cfg = tiny_train_config(compile=True, channels_last=True)
    with caplog.at_level(logging.WARNING, logger="g2i_models.device"):
        prepare_for_training(cfg, net, None, private=True)
    assert net.forward == forward and not net._forward_pre_hooks
    assert "DP-SGD" in caplog.text


def _train_ae(**train: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ae = build_autoencoder(tiny_model_config(), IMAGE_SIZE)
    data = SyntheticSliceDataset(8, IMAGE_SIZE, n_snps=N_SNPS, seed=0)
    cfg = tiny_train_config(max_steps_ae=2, **train)
    return train_local("ae", ae, data, cfg, CPU, seed=3).weights


def test_training_core_with_channels_last_and_compile_matches_eager() -> None:
    eager = _train_ae()
    fast = _train_ae(channels_last=True, compile=True, compile_backend="eager")
    assert list(fast) == list(eager)
    for name, w in eager.items():
        assert fast[name].is_contiguous(), name
        torch.testing.assert_close(fast[name], w, rtol=1e-4, atol=1e-5)


def test_fp16_steps_go_through_the_loss_scaler() -> None:
    torch.manual_seed(0)
    start = build_autoencoder(tiny_model_config(), IMAGE_SIZE).state_dict()
    weights = _train_ae(mixed_precision="fp16")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert any(not torch.equal(weights[k], start[k]) for k in start)
