"""The one place that picks a device, seeds the RNGs and decides on mixed precision,
memory format and compilation.

``prepare_models`` is what the training core calls on its networks: channels-last inputs
and ``torch.compile`` of the heavy submodules (the autoencoder's encoder and decoder, the
denoiser's UNet), each optional. Neither changes the parameters' names or layout, so the
state dicts that the core returns, saves and sends are those of eager, contiguous models.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from conf.schema import TrainConfig

log = logging.getLogger(__name__)


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


MIXED_PRECISION = ("auto", "bf16", "fp16", "no")


def autocast_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``train.mixed_precision`` on ``device`` (None = fp32).

    ``"auto"``: bf16 on a CUDA device that supports it, fp16 on one that does not (pre-Ampere;
    the training steps then scale the loss), None elsewhere (CPU bf16 autocast is slower
    than fp32). ``"bf16"`` / ``"fp16"`` force that dtype, ``"no"`` forces fp32.
    """
    if mode not in MIXED_PRECISION:
        raise ValueError(f"train.mixed_precision must be one of {MIXED_PRECISION}, got {mode!r}")
    if mode == "no" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, mode: str = "auto") -> Iterator[None]:
    """Autocast context for the forward pass (a no-op when ``autocast_dtype`` is None)."""
    dtype = autocast_dtype(device, mode)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


_logged: set[str] = set()


def _log_once(message: str) -> None:
    """Log a fallback once per process, not once per module or round."""
    if message not in _logged:
        _logged.add(message)
        log.warning(message)


def heavy_submodules(model: nn.Module) -> list[nn.Module]:
    """The submodules worth compiling: an ``AutoencoderKL``'s encoder and decoder (training
    and sampling call ``encode`` / ``decode``, never its ``forward``), a denoiser's UNet, else
    the model itself."""
    parts = [getattr(model, name, None) for name in ("encoder", "decoder", "unet")]
    found = [p for p in parts if isinstance(p, nn.Module)]
    return found or [model]


def _to_channels_last(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value


def _channels_last_hook(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (
        tuple(_to_channels_last(a) for a in args),
        {k: _to_channels_last(v) for k, v in kwargs.items()},
    )


def compile_with_fallback(
    module: nn.Module, backend: str | Callable[..., Any] = "inductor"
) -> None:
    """Replace ``module.forward`` by its ``torch.compile`` (``backend``), in place.

    Compilation happens at the first call (and again for new input shapes); when it fails
    (no C++ compiler, an unsupported op, an unsupported Python), that call and all later
    ones run the eager forward and the failure is logged once. An error that the eager
    forward raises as well is the caller's and propagates. A failure compiling the backward
    (at the first ``backward()``) is not caught. Parameter names are unchanged (no
    ``_orig_mod.`` prefix)."""
    if getattr(module, "_g2i_compiled", False):
        return
    eager = module.forward
    module._g2i_compiled = True  # type: ignore[assignment]
    if not torch._dynamo.is_dynamo_supported():
        _log_once("torch.compile is not supported here (train.compile): running eager")
        return
    compiled = torch.compile(eager, backend=backend)
    failed = False

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if failed:
            return eager(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as err:
            # The caller's own error (a wrong shape) raises again here, compilation kept;
            # when eager succeeds, the compiler failed: eager from now on.
            out = eager(*args, **kwargs)
            failed = True
            # Dynamo wraps the backend's error; name the cause.
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err
            text = str(cause).strip()
            first = text.splitlines()[0][:200] if text else ""
            _log_once(
                f"torch.compile of {type(module).__name__} failed ({type(cause).__name__}: "
                f"{first}); running eager (train.compile=false skips compilation)"
            )
            return out

    module.forward = forward  # type: ignore[method-assign]


def prepare_models(
    models: Iterable[nn.Module | None],
    *,
    channels_last: bool = False,
    compile: bool = False,
    backend: str | Callable[..., Any] = "inductor",
) -> None:
    """Apply ``train.channels_last`` and ``train.compile`` to the heavy submodules of each
    model (None entries skipped); idempotent, so a model trained round after round is
    prepared once.

    Channels-last converts 4-D inputs of those submodules (convolutions then run and return
    NHWC) and leaves the weights contiguous, so checkpoints (safetensors needs contiguous
    tensors) and the weights on the wire are unchanged.
    """
    for model in models:
        if model is None:
            continue
        for part in heavy_submodules(model):
            if channels_last and not getattr(part, "_g2i_channels_last", False):
                part.register_forward_pre_hook(_channels_last_hook, with_kwargs=True)
                part._g2i_channels_last = True  # type: ignore[assignment]
            if compile:
                compile_with_fallback(part, backend)


def prepare_for_training(
    cfg: TrainConfig, *models: nn.Module | None, private: bool = False
) -> None:
    """``prepare_models`` with ``cfg``'s channels_last / compile / compile_backend; nothing
    under DP-SGD (``private``), where Opacus's per-sample hooks need the eager modules."""
    if private:
        if cfg.channels_last or cfg.compile:
            _log_once("DP-SGD: train.channels_last and train.compile are not applied")
        return
    prepare_models(
        models,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        backend=cfg.compile_backend,
    )
