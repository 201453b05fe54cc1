from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from g2i_eval.memorisation import memorisation_audit, nearest_neighbours

# Tiny networks: thread start-up and contention cost more than they save.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def numpy_nearest(q: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, r = q.reshape(len(q), -1), r.reshape(len(r), -1)
    d = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    return d.min(1) / np.sqrt(q.shape[1]), d.argmin(1)


def test_nearest_neighbours_match_numpy_in_chunks() -> None:
    g = torch.Generator().manual_seed(0)
    q, r = torch.rand(13, 1, 6, 6, generator=g), torch.rand(9, 1, 6, 6, generator=g)
    d, i = nearest_neighbours(q, r, batch=4)
    d_ref, i_ref = numpy_nearest(q.numpy().astype(np.float64), r.numpy().astype(np.float64))
    np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-12)
    np.testing.assert_array_equal(i.numpy(), i_ref)
    # RMS per pixel: a constant offset of 0.1 is a distance of 0.1 at any image size.
    for size in (4, 16):
        x = torch.rand(1, 1, size, size, generator=g)
        assert nearest_neighbours(x + 0.1, x)[0].item() == pytest.approx(0.1)


@pytest.fixture()
def planted() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    train = torch.rand(20, 1, 16, 16, generator=g)
    test = torch.rand(10, 1, 16, 16, generator=g)
    # Generated images a little brighter than the real ones: never closer to the training set
    # than real test images are (a fresh draw like the test images would be flagged at the
    # quantile's rate by chance).
    synthetic = torch.rand(12, 1, 16, 16, generator=g) + 0.25
    synthetic[4] = train[3]  # exact copy
    synthetic[9] = train[7] + 1e-3 * torch.randn(1, 16, 16, generator=g)  # near copy
    return {"train": train, "test": test, "synthetic": synthetic}


def test_planted_copies_and_nothing_else_are_flagged(planted: dict[str, Any]) -> None:
    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 2).flatten(1)

    r = memorisation_audit(**planted, features=features, quantile=0.05)
    for space in ("pixel", "features"):
        s = r[space]
        assert [f["synthetic_index"] for f in s["flagged"]] == [4, 9]
        assert s["fraction_flagged"] == pytest.approx(2 / 12)
        assert s["flagged"][0]["distance"] == 0.0 and 0 < s["flagged"][1]["distance"] < 0.01
        assert s["synthetic_to_train"]["min"] == 0.0
        assert s["threshold"] > s["flagged"][1]["distance"]
    base, _ = nearest_neighbours(planted["test"], planted["train"])
    assert r["pixel"]["threshold"] == pytest.approx(float(np.quantile(base.numpy(), 0.05)))
    assert r["pixel"]["test_to_train"]["q50"] == pytest.approx(float(np.median(base.numpy())))
    assert (r["n_synthetic"], r["n_train"], r["n_test"]) == (12, 20, 10)
    clean = memorisation_audit(planted["synthetic"][[0, 1, 2]], planted["train"], planted["test"])
    assert clean["pixel"]["flagged"] == [] and "features" not in clean


def _leaves(x: Any) -> list[Any]:
    if isinstance(x, dict):
        return [v for val in x.values() for v in _leaves(val)]
    if isinstance(x, list):
        return [v for val in x for v in _leaves(val)]
    return [x]


def _keys(x: Any) -> set[str]:
    if isinstance(x, dict):
        return set(x) | {k for v in x.values() for k in _keys(v)}
    if isinstance(x, list):
        return {k for v in x for k in _keys(v)}
    return set()


def test_result_holds_no_training_pixel_index_or_id(planted: dict[str, Any]) -> None:
    r = memorisation_audit(**planted, quantile=0.05)
    json.dumps(r)  # plain JSON values only: no tensor or array rides along
    leaves = _leaves(r)
    assert all(isinstance(v, int | float) for v in leaves)
    assert len(leaves) < 60  # summaries, not per-image lists of the training set
    train_pixels = set(planted["train"].double().flatten().tolist())
    assert not train_pixels & {float(v) for v in leaves if isinstance(v, float)}
    assert _keys(r) == {
        "pixel",
        "synthetic_to_train",
        "test_to_train",
        "min",
        "q05",
        "q25",
        "q50",
        "mean",
        "threshold",
        "fraction_flagged",
        "flagged",
        "synthetic_index",
        "distance",
        "quantile",
        "n_synthetic",
        "n_train",
        "n_test",
    }
