"""The run's privacy ledger: every field a row carries reaches privacy_ledger.csv, read back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conf.schema import PrivacyConfig
from server.report import privacy_ledger, write_ledger


def _round(phase: str, k: int, metrics: dict[str, dict[str, float]]) -> dict:
    return {"phase": phase, "round": k, "site_metrics": metrics, "aggregated": True}


def test_dp_sgd_ledger_rows_with_sample_rate_are_written_and_read_back(tmp_path: Path) -> None:
    site = {"epsilon": 1.5, "delta": 1e-5, "noise-multiplier": 1.1, "dp-sample-rate": 0.25,
            "dp-steps": 8.0}  # fmt: skip
    rounds = [_round("ldm", 1, {"site-0": site, "site-1": {**site, "epsilon": 2.0}})]
    rows = privacy_ledger(rounds, PrivacyConfig(mode="dp_sgd"), n_sampled=2, n_sites=2)
    back = pd.read_csv(write_ledger(rows, tmp_path))
    assert list(back["site"]) == ["site-0", "site-1"]
    assert list(back["sample_rate"]) == [0.25, 0.25]
    assert list(back["epsilon"]) == [1.5, 2.0]


def test_central_dp_ledger_names_the_site_sampling_rate(tmp_path: Path) -> None:
    rounds = [_round("ae", k, {}) for k in (1, 2)]
    privacy = PrivacyConfig(mode="central_dp", noise_multiplier=1.0)
    back = pd.read_csv(write_ledger(privacy_ledger(rounds, privacy, 2, 4), tmp_path))
    assert list(back["sample_rate"]) == [0.5, 0.5]
    assert back["epsilon"].is_monotonic_increasing
    assert back["epsilon"].iloc[0] == pytest.approx(rows_eps(privacy, 0.5), rel=1e-9)


def rows_eps(privacy: PrivacyConfig, q: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history.append((privacy.noise_multiplier, q, 1))
    return float(acc.get_epsilon(privacy.delta))
