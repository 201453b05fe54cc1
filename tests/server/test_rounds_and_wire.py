"""Which rounds send the model out for validation, the progress line, weights as float16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from contract.wire import load_wire, to_wire
from server.phases import round_line
from server.strategy import GuardedStrategy, RoundLog


class _Inner:
    """Stands for a Flower strategy: one evaluate message per round it is asked for."""

    def configure_evaluate(self, *args: object) -> list[str]:
        return ["evaluate message"]


def _evaluated_rounds(num_rounds: int, every: int, offset: int = 0) -> list[int]:
    strategy = GuardedStrategy(_Inner(), 1, "ae")  # type: ignore[arg-type]
    strategy.num_rounds, strategy.evaluate_every, strategy.round_offset = num_rounds, every, offset
    return [
        r
        for r in range(1, num_rounds + 1)
        if list(strategy.configure_evaluate(r, ArrayRecord(), ConfigRecord(), None))
    ]


def test_only_the_last_round_evaluates_by_default() -> None:
    assert _evaluated_rounds(4, 0) == [4]


def test_every_nth_round_of_the_phase_and_the_last() -> None:
    assert _evaluated_rounds(5, 2) == [2, 4, 5]
    # Resumed after 1 round: the phase's rounds 2 and 4 are this start's 1 and 3.
    assert _evaluated_rounds(4, 2, offset=1) == [1, 3, 4]


def test_round_line_names_phase_round_sites_loss_and_time() -> None:
    entry = RoundLog(
        "ae",
        2,
        site_metrics={"site-0": {"loss": 0.1, "val-psnr": 24.0}, "site-1": {"loss": 0.3}},
    )
    line = round_line(entry, 3, 3, 12.34)
    assert line == "[ae round 2/3] 2/3 sites, loss 0.2000, val-psnr 24, 12.3 s"


def test_weights_travel_as_float16_and_load_back() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    wire = to_wire(model.state_dict())
    assert wire["0.weight"].dtype == np.float16
    assert wire["1.num_batches_tracked"].dtype == np.float32  # integers are not halved
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    load_wire(other, wire)
    assert other[0].weight.dtype == torch.float32
    assert torch.allclose(other[0].weight, model[0].weight, rtol=1e-3, atol=1e-4)
    assert not torch.equal(other[0].weight, torch.zeros(3, 4))
    with pytest.raises(RuntimeError):
        load_wire(torch.nn.Linear(4, 2), wire)
