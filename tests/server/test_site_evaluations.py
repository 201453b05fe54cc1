"""The server turns the sites' evaluation replies into metrics.json's two sections."""

from __future__ import annotations

import pytest

from contract.messages import SiteEvaluation
from contract.wire import flatten_metrics
from g2i_eval.classifier import ARMS, METRICS
from server.server_app import site_evaluations


def _downstream(accuracy: float) -> dict:
    arm = {
        m: {"mean": accuracy, "sd": 0.1, "values": [accuracy - 0.1, accuracy + 0.1]}
        for m in METRICS
    }
    counts = {"real": 4, "synthetic": 2, "unique_synthetic": 2, "with_replacement": 0}
    return {
        **{a: arm for a in ARMS},
        "gain": {m: 0.0 for m in METRICS},
        "counts": {"CN": counts, "MCI": counts, "AD": counts},
        "seeds": [0, 1],
        "n_train": 12,
        "n_test": 6,
        "per_class": 6,
    }


def _audit(share: float) -> dict:
    space = {"fraction_flagged": share, "synthetic_to_train_q50": 0.3, "test_to_train_q50": 0.2}
    return {"pixel": space, "features": space, "quantile": 0.05, "n_synthetic": 6}


def _reply(accuracy: float, share: float) -> SiteEvaluation:
    return SiteEvaluation(flatten_metrics(_downstream(accuracy)), flatten_metrics(_audit(share)))


def test_per_site_sections_and_across_site_summary() -> None:
    replies = {"site-1": _reply(0.6, 0.0), "site-0": _reply(0.4, 0.33)}
    wire = {k: SiteEvaluation.from_record(v.to_record()) for k, v in replies.items()}
    down, mem = site_evaluations(wire)
    assert list(down["sites"]) == ["site-0", "site-1"]
    assert down["sites"]["site-0"] == _downstream(0.4)  # the wire round trip is lossless
    pooled = down["across_sites"]["augmented"]["accuracy"]
    assert pooled["mean"] == pytest.approx(0.5) and pooled["sd"] == pytest.approx(0.1414, 1e-3)
    assert mem["sites"]["site-0"] == _audit(0.33)
    assert site_evaluations({}) == ({"sites": {}, "across_sites": {}}, {"sites": {}})
