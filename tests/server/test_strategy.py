"""GuardedStrategy: failed and non-finite updates never reach aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app import Error as FlwrError
from flwr.serverapp import strategy as fl

from conf import load_config, to_object
from conf.schema import ConfigConflictError, check_config
from server.strategy import GuardedStrategy, TooFewSitesError, build_strategy
from tests.server.messages import sent


def _as_reply_from(node: int, **content: object) -> Message:
    # A reply as the server receives it: a query to the node, answered by that node.
    return Message(reply_to=sent(node, "train"), **content)


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
    with pytest.raises(Exception, match="FedMagic"):
        load_config("tiny", "federation.strategy=FedMagic")


def test_central_dp_noise_and_weights_for_the_sites_that_replied() -> None:
    """A site drops: the noise is calibrated to the 2 that replied (C / 2), and a site with
    100x the examples weighs as much as the other (size weighting would raise its
    sensitivity above C / n)."""
    cfg = load_config("tiny", "privacy=central_dp privacy.noise_multiplier=0.0")
    s = build_strategy(to_object(cfg.federation), to_object(cfg.privacy), 3)
    s.current_arrays = ArrayRecord(array_dict={"w": Array(np.zeros((2, 2), np.float32))})
    g = GuardedStrategy(s, 2, "ae")
    good = [_reply(1, 0.2, n=10), _reply(2, 0.4, n=1000)]
    for r in good:
        r.content["metrics"]["unit-weight"] = 1
    arrays, _ = g.aggregate_train(1, [*good, _error(3)])
    assert s.num_sampled_clients == 2
    np.testing.assert_allclose(arrays["w"].numpy(), 0.3, rtol=1e-6)


def test_dp_sgd_with_fedprox_is_refused() -> None:
    from conf.schema import ConfigConflictError, check_config

    with pytest.raises(ConfigConflictError, match="proximal"):
        check_config(load_config("tiny", "privacy=dp_sgd federation.strategy=FedProx"))


def test_float16_updates_are_averaged_in_float32() -> None:
    """Sites send float16; the mean is taken in float32, so it is exact where a float16 sum
    would round (1 + 2**-11 is not a float16 value)."""
    a, b = 1.0, 1.0 + 2.0**-10  # both float16 values; their mean is not
    replies = []
    for node, value in ((1, a), (2, b)):
        content = RecordDict(
            {
                "arrays": ArrayRecord(
                    array_dict={"w": Array(np.full((2, 2), value, np.float16))}
                ),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        replies.append(_as_reply_from(node, content=content))
    g = GuardedStrategy(fl.FedAvg(min_train_nodes=2), 2, "ae", {1: "a", 2: "b"})
    arrays, _ = g.aggregate_train(1, replies)
    w = arrays["w"].numpy()
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.float32((a + b) / 2))
    assert np.float16((a + b) / 2) != np.float32((a + b) / 2)  # float16 would have rounded


def test_a_resumed_fedadam_continues_as_if_never_stopped(tmp_path) -> None:
    """Two FedAdam rounds straight through == one round, a checkpoint written to and read
    from disk (weights and moments), and a resumed start whose first round is round 2."""
    from server.run_state import RunState, restore_strategy_state, strategy_state

    cfg = load_config("tiny", "federation.strategy=FedAdam")
    fed, privacy = to_object(cfg.federation), to_object(cfg.privacy)
    rounds = {1: [(1, 1.0), (2, 3.0)], 2: [(1, 2.0), (2, -0.5)]}

    def aggregate(g: GuardedStrategy, server_round: int, phase_round: int) -> dict:
        replies = [_reply(node, v) for node, v in rounds[phase_round]]
        arrays, _ = g.aggregate_train(server_round, replies)
        return {k: a.numpy() for k, a in arrays.items()}

    start = {"w": np.zeros((2, 2), np.float32)}
    straight = GuardedStrategy(build_strategy(fed, privacy, 2), 2, "ae")
    straight.inner.current_arrays = dict(start)  # what configure_train sets
    after_1 = aggregate(straight, 1, 1)
    run = RunState(tmp_path / "run")
    run.checkpoint("ae", 1, after_1, strategy_state(straight.inner))
    straight.inner.current_arrays = dict(after_1)
    after_2 = aggregate(straight, 2, 2)

    def resumed(moments: bool) -> dict:
        inner = build_strategy(fed, privacy, 2)
        saved = RunState(tmp_path / "run")
        state = saved.load_strategy_state("ae") if moments else {}
        weights = saved.load_checkpoint("ae")
        restore_strategy_state(inner, state, weights)
        inner.current_arrays = dict(weights)
        g = GuardedStrategy(inner, 2, "ae")
        g.round_offset = saved.rounds_done("ae")
        return aggregate(g, 1, 2)

    np.testing.assert_allclose(resumed(moments=True)["w"], after_2["w"], rtol=1e-6)
    # Without the saved moments the resumed round lands elsewhere: the state matters.
    assert not np.allclose(resumed(moments=False)["w"], after_2["w"], rtol=1e-3)


@pytest.mark.parametrize(("momentum", "expected"), [(0.9, 1.0 + 1.9), (0.0, 2.0), (0.5, 2.5)])
def test_fedavgm_applies_the_configured_server_momentum(momentum: float, expected: float) -> None:
    """FedAvgM from the config keeps a momentum of the global moves: two rounds in which the
    sites' mean moves the model by +1 each land at 1 + (1 + momentum), where FedAvg lands at
    2 (Flower's default momentum, 0, made FedAvgM plain FedAvg)."""
    cfg = load_config(
        "tiny", ["federation.strategy=FedAvgM", f"federation.server_momentum={momentum}"]
    )
    inner = build_strategy(to_object(cfg.federation), to_object(cfg.privacy), 2)
    assert inner.server_momentum == momentum
    g = GuardedStrategy(inner, 2, "ldm")
    inner.current_arrays = ArrayRecord(array_dict={"w": Array(np.zeros((2, 2), np.float32))})
    for server_round in (1, 2):
        here = float(inner.current_arrays["w"].numpy()[0, 0])
        # the sites' mean moves the model by +1 from where it now is
        arrays, _ = g.aggregate_train(server_round, [_reply(1, here + 0.5), _reply(2, here + 1.5)])
        inner.current_arrays = arrays
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 2), expected), rtol=1e-6)


def test_fedavgm_momentum_out_of_range_is_refused() -> None:
    cfg = load_config("tiny", ["federation.strategy=FedAvgM", "federation.server_momentum=1.0"])
    with pytest.raises(ConfigConflictError, match="server_momentum"):
        check_config(cfg)
