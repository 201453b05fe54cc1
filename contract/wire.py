"""Wire helpers shared by the ServerApp and the ClientApp: named numpy arrays in an
ArrayRecord, model weights as float16 arrays, nested metrics as flat MetricRecord values,
and a one-line summary of an error reply."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

from g2i_models.privacy import strip_private_prefix

Metric = int | float | list[int] | list[float]


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named arrays -> ArrayRecord (names kept, C-contiguous)."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays."""
    return {k: v.numpy() for k, v in record.items()}


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of named arrays (order-independent)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# Weights travel as float16 (half the bytes of float32); the server averages them in float32
# (server.strategy.cast_record). bfloat16 cannot travel in an ArrayRecord at all.
WIRE_DTYPE = torch.float16


def to_wire(
    state: Mapping[str, torch.Tensor], dtype: torch.dtype = WIRE_DTYPE
) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays, floating tensors in ``dtype`` (others as float32),
    without Opacus's ``_module.`` prefix."""
    return {
        k: v.detach().cpu().to(dtype if v.is_floating_point() else torch.float32).numpy()
        for k, v in strip_private_prefix(dict(state)).items()
    }


def load_wire(model: torch.nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Inverse of ``to_wire`` into ``model`` (strict key match; values are cast to the
    model's own dtypes)."""
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def all_finite(arrays: Mapping[str, np.ndarray]) -> bool:
    return all(np.isfinite(np.asarray(a)).all() for a in arrays.values())


def error_summary(msg: Message, limit: int = 400) -> str:
    """The last line of an error reply's reason, at most ``limit`` characters."""
    return msg.error.reason.strip().splitlines()[-1][:limit]


def flatten_metrics(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Metric]:
    """Nested results -> MetricRecord values with ``/``-joined keys; booleans become 0/1."""
    out: dict[str, Metric] = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_metrics(v, f"{key}/"))
        elif isinstance(v, list | tuple):
            out[key] = [x if isinstance(x, int) else float(x) for x in v]
        elif isinstance(v, bool | np.bool_ | int | np.integer):
            out[key] = int(v)
        else:
            out[key] = float(v)
    return out


def unflatten_metrics(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten_metrics``."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = list(v) if isinstance(v, list | tuple) else v
    return out
