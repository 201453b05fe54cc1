"""The ServerApp speaks only the message contract: it imports nothing from client/."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord

from contract.messages import EvaluateSyntheticRequest, RoundConfig, SyntheticSet

SERVER = Path(__file__).resolve().parents[2] / "server"


def test_server_imports_nothing_from_the_client() -> None:
    for path in SERVER.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "client" or n.startswith("client.") for n in names), path


def test_round_config_round_trip() -> None:
    rc = RoundConfig("ldm", ["rs1", "rs2"], seed=3, total_dp_steps=40, round_offset=2, scale=0.5)
    wire = ConfigRecord({**rc.to_config(), "server-round": 1})
    back = RoundConfig.from_config(wire)
    assert back.round == 3 and back.panel == ["rs1", "rs2"] and back.scale == 0.5


def test_synthetic_digest_names_the_set() -> None:
    rng = np.random.default_rng(0)
    s = SyntheticSet(rng.random((3, 1, 4, 4)), np.arange(3), np.zeros((3, 2)), ["a", "b"])
    back = SyntheticSet.from_record(s.to_record())
    assert back.digest() == s.digest()
    back.images[0, 0, 0, 0] += 1e-6
    assert back.digest() != s.digest()


def test_unknown_evaluation_setting_is_refused() -> None:
    import pytest

    rec = EvaluateSyntheticRequest("d", {"classifier_epochs": 1}).to_record()
    rec["config"]["audit-quantile"] = 0.5  # the audit's quantile is the site's policy
    with pytest.raises(KeyError, match="audit-quantile"):
        EvaluateSyntheticRequest.from_record(rec)
