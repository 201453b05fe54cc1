"""Failures are named by the site a message went to, with their phase and round.

When a SuperNode dies, the SuperLink answers in its place: that error reply's ``src_node_id``
is the SuperLink's own ID (1). These tests build such replies the way Flower 1.41 does
(``create_message_error_unavailable_res_message``) and check that the failure lands under
the site's name in the round log and in metrics.json's ``failures``.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.serverapp import strategy as fl

from server.report import failures_by_site, privacy_ledger, training_rounds
from server.strategy import NO_REPLY, GuardedStrategy, RoundLog, TooFewSitesError, sort_replies
from tests.server.messages import sent

SUPERLINK = 1  # the node ID Flower's SuperLink gives its own error replies
NAMES = {101: "site-0", 202: "site-1", 303: "site-2"}


def _sent(nodes: list[int], kind: str = "train") -> list[Message]:
    """Messages as the grid leaves them after pushing: each with its message ID."""
    return [sent(n, kind) for n in nodes]


def _update(query: Message, value: float) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={"w": Array(np.full((2,), value, np.float32))}),
            "metrics": MetricRecord({"num-examples": 4, "loss": 0.25}),
        }
    )
    return Message(content, reply_to=query)


def _node_unavailable(query: Message) -> Message:
    return create_message_error_unavailable_res_message(query.metadata, "node_unavail")


def test_superlink_error_reply_is_named_by_the_destination_site() -> None:
    sent = _sent([101, 202, 303])
    reply = _node_unavailable(sent[1])
    assert reply.metadata.src_node_id == SUPERLINK  # what the old code took for the site
    good, failed = sort_replies(sent, [_update(sent[0], 1.0), reply])
    assert set(good) == {101}
    assert set(failed) == {202, 303}
    assert "Node Unavailable" in failed[202]
    assert failed[303] == NO_REPLY


class _Fixed(fl.FedAvg):
    """FedAvg that sends to a fixed list of messages (no grid needed)."""

    def __init__(self, messages: list[Message]) -> None:
        super().__init__(min_train_nodes=1, min_available_nodes=1)
        self.messages = messages

    def configure_train(self, *args: object) -> list[Message]:  # noqa: ARG002
        return self.messages

    def configure_evaluate(self, *args: object) -> list[Message]:  # noqa: ARG002
        return self.messages


def test_guarded_round_names_dead_silent_and_dropped_sites() -> None:
    sent = _sent([101, 202, 303])
    strategy = GuardedStrategy(_Fixed(sent), 1, "ldm", NAMES)
    strategy.round_offset = 2
    out = strategy.configure_train(1, ArrayRecord(), None, None)  # type: ignore[arg-type]
    assert out == sent
    arrays, _ = strategy.aggregate_train(
        1, [_update(sent[0], 1.0), _node_unavailable(sent[1]), _update(sent[2], float("nan"))]
    )
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0)
    log = strategy.rounds[-1]
    assert (log.phase, log.round, log.aggregated) == ("ldm", 3, True)
    assert set(log.failures) == {"site-1", "site-2"}
    assert "Node Unavailable" in log.failures["site-1"]
    assert log.failures["site-2"] == "rejected: non-finite or missing weights"
    assert "1" not in log.failures and "node 1" not in log.failures

    evaluate = _sent([101, 303], "evaluate")
    strategy.inner.messages = evaluate
    strategy.configure_evaluate(1, ArrayRecord(), None, None)  # type: ignore[arg-type]
    strategy.aggregate_evaluate(1, [])  # nobody answered the evaluation
    assert log.failures["site-0"] == f"evaluate: {NO_REPLY}"
    assert log.failures["site-2"].endswith(f"; evaluate: {NO_REPLY}")


def test_stopped_round_is_marked_and_unknown_nodes_are_not_given_the_superlink_id() -> None:
    sent = _sent([101, 404])
    strategy = GuardedStrategy(_Fixed(sent), 2, "ae", NAMES)
    strategy.configure_train(1, ArrayRecord(), None, None)  # type: ignore[arg-type]
    with pytest.raises(TooFewSitesError, match="1 usable updates, 2 needed"):
        strategy.aggregate_train(1, [_update(sent[0], 1.0), _node_unavailable(sent[1])])
    log = strategy.rounds[-1]
    assert log.aggregated is False
    assert set(log.failures) == {"node 404"}


def test_metrics_failures_carry_phase_and_round_and_skip_nothing() -> None:
    rounds = [
        RoundLog("census", None, failures={"site-2": "GenotypeFormatError: bad .bed"}).__dict__,
        RoundLog("ae", 1, {"site-0": {"loss": 1.0}}).__dict__,
        RoundLog(
            "ldm", 1, {"site-0": {"loss": 1.0}}, {"site-1": "Error: Node Unavailable"}
        ).__dict__,
        RoundLog("synthetic set", None, failures={"site-1": "Error: Node Unavailable"}).__dict__,
    ]
    assert failures_by_site(rounds) == {
        "site-2": ["census: GenotypeFormatError: bad .bed"],
        "site-1": [
            "ldm round 1: Error: Node Unavailable",
            "synthetic set: Error: Node Unavailable",
        ],
    }
    # The one-shot steps' lines are not training rounds: plots and ledgers skip them.
    assert [(r["phase"], r["round"]) for r in training_rounds(rounds)] == [("ae", 1), ("ldm", 1)]


def test_central_dp_ledger_counts_only_aggregated_rounds() -> None:
    from conf import load_config, to_object

    privacy = to_object(load_config("tiny", "privacy=central_dp").privacy)
    rounds = [
        RoundLog("ae", 1).__dict__,
        RoundLog("ae", 2, aggregated=False).__dict__,
        RoundLog("prepare", None, failures={"site-1": "x"}).__dict__,
    ]
    rows = privacy_ledger(rounds, privacy, 2, 2)
    assert [(r["phase"], r["round"]) for r in rows] == [("ae", 1)]


def test_the_server_logs_each_line_once() -> None:
    """Opacus's import-time ``basicConfig`` doubled every Flower log line (and so every line
    ``flwr run --stream`` prints); the ServerApp's import removes that root handler."""
    import logging

    import server.server_app  # noqa: F401 - imports Opacus, then server.report
    from server.report import OPACUS_LOG_FORMAT, drop_opacus_root_handler

    root = logging.getLogger()
    assert not [h for h in root.handlers if getattr(h.formatter, "_fmt", None) == OPACUS_LOG_FORMAT]
    ours = logging.StreamHandler()
    opacus_like = logging.StreamHandler()
    opacus_like.setFormatter(logging.Formatter(OPACUS_LOG_FORMAT))
    root.addHandler(ours)
    root.addHandler(opacus_like)
    try:
        drop_opacus_root_handler()
        assert ours in root.handlers and opacus_like not in root.handlers
    finally:
        root.removeHandler(ours)
        root.removeHandler(opacus_like)
