"""The server turns the sites' evaluation replies into metrics.json's two sections."""

from __future__ import annotations

import pytest
from flwr.app import MetricRecord, RecordDict

from client.task import flatten_metrics
from g2i_eval.classifier import ARMS, METRICS
from server.server_app import _site_evaluations


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


def _audit(flagged: list[int]) -> dict:
    summary = {"min": 0.0, "q05": 0.1, "q25": 0.2, "q50": 0.3, "mean": 0.3}
    space = {
        "synthetic_to_train": summary,
        "test_to_train": summary,
        "threshold": 0.1,
        "fraction_flagged": len(flagged) / 6,
        "flagged": [{"synthetic_index": i, "distance": 0.0} for i in flagged],
    }
    return {"pixel": space, "features": space, "quantile": 0.05, "n_synthetic": 6}


def _reply(accuracy: float, flagged: list[int]) -> RecordDict:
    return RecordDict(
        {
            "downstream": MetricRecord(flatten_metrics(_downstream(accuracy))),
            "memorisation": MetricRecord(flatten_metrics(_audit(flagged))),
        }
    )


def test_per_site_sections_and_across_site_summary() -> None:
    down, mem = _site_evaluations({"site-1": _reply(0.6, []), "site-0": _reply(0.4, [2, 5])})
    assert list(down["sites"]) == ["site-0", "site-1"]
    assert down["sites"]["site-0"] == _downstream(0.4)  # the wire round trip is lossless
    pooled = down["across_sites"]["augmented"]["accuracy"]
    assert pooled["mean"] == pytest.approx(0.5) and pooled["sd"] == pytest.approx(0.1414, 1e-3)
    assert mem["sites"]["site-0"] == _audit([2, 5])
    assert mem["flagged_by_site"] == {
        "site-0": {"pixel": [2, 5], "features": [2, 5]},
        "site-1": {"pixel": [], "features": []},
    }
    assert _site_evaluations({}) == (
        {"sites": {}, "across_sites": {}},
        {"sites": {}, "flagged_by_site": {}},
    )
