"""GuardedStrategy: failed and non-finite updates never reach aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app import Error as FlwrError
from flwr.serverapp import strategy as fl
from flwr.supercore.task_identity import TaskIdentity

from conf import load_config, to_object
from server.strategy import GuardedStrategy, TooFewSitesError, build_strategy


def _as_reply_from(node: int, **content: object) -> Message:
    # A reply as the server receives it: a query to the node, answered by that node.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    query = Message(RecordDict(), dst_node_id=node, message_type="train")
    TaskIdentity.node_id = node
    return Message(reply_to=query, **content)


def _reply(node: int, value: float, n: int = 10) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={"w": Array(np.full((2, 2), value, np.float32))}),
            "metrics": MetricRecord({"num-examples": n, "loss": 0.5, "epsilon": 1.5}),
        }
    )
    return _as_reply_from(node, content=content)


def _error(node: int) -> Message:
    err = FlwrError(code=0, reason="Traceback...\nGenotypeFormatError: bad .bed")
    return _as_reply_from(node, error=err)


@pytest.fixture()
def replies() -> list[Message]:
    return [_reply(1, 1.0), _reply(2, 3.0), _reply(3, float("nan")), _error(4)]


def test_non_finite_and_failed_updates_are_dropped(replies: list[Message]) -> None:
    g = GuardedStrategy(fl.FedAvg(min_train_nodes=2), 2, "ae", {1: "a", 2: "b", 3: "c", 4: "d"})
    arrays, _ = g.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)  # mean of the two good sites only
    log = g.rounds[-1]
    assert log.failures == {
        "c": "rejected: non-finite or missing weights",
        "d": "GenotypeFormatError: bad .bed",
    }
    assert set(log.site_metrics) == {"a", "b"} and log.site_metrics["a"]["epsilon"] == 1.5


def test_too_few_good_sites_stops_the_round(replies: list[Message]) -> None:
    g = GuardedStrategy(fl.FedAvg(), 3, "ldm")
    with pytest.raises(TooFewSitesError, match="2 usable updates, 3 needed"):
        g.aggregate_train(1, replies)


@pytest.mark.parametrize("name", ["FedAvg", "FedProx", "FedAdam", "FedMedian", "FedTrimmedAvg"])
def test_strategy_from_config(name: str) -> None:
    cfg = load_config("tiny", f"federation.strategy={name} federation.proximal_mu=0.1")
    s = build_strategy(to_object(cfg.federation), to_object(cfg.privacy), 3)
    assert type(s).__name__ == name
    if name == "FedProx":
        assert s.proximal_mu == 0.1


def test_central_dp_wraps_the_strategy() -> None:
    cfg = load_config("tiny", "privacy=central_dp")
    s = build_strategy(to_object(cfg.federation), to_object(cfg.privacy), 3)
    assert isinstance(s, fl.DifferentialPrivacyClientSideFixedClipping)


def test_unknown_strategy_is_refused() -> None:
    cfg = load_config("tiny", "federation.strategy=FedMagic")
    with pytest.raises(ValueError, match="FedMagic"):
        build_strategy(to_object(cfg.federation), to_object(cfg.privacy), 3)
