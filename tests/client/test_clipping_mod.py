"""Central DP: the train handler clips its update only when the server asks for it."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.client_app import optional_clipping_mod
from tests.server.messages import sent


def _train_message(config: dict) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={"w": Array(np.zeros(4, np.float32))}),
            "config": ConfigRecord(config),
        }
    )
    return sent(7, "train", content)


def _handler(msg: Message, ctxt: Context) -> Message:
    # A local update of norm 10 away from the global weights.
    out = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={"w": Array(np.full(4, 5.0, np.float32))}),
            "metrics": MetricRecord({"num-examples": 3}),
        }
    )
    return Message(out, reply_to=msg)


def _ctx() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_update_is_clipped_to_the_servers_norm() -> None:
    reply = optional_clipping_mod(_train_message({"clipping_norm": 1.0}), _ctx(), _handler)
    w = reply.content["arrays"]["w"].numpy()
    np.testing.assert_allclose(np.linalg.norm(w), 1.0, rtol=1e-5)


def test_without_central_dp_the_update_passes_unchanged() -> None:
    reply = optional_clipping_mod(_train_message({"phase": "ae"}), _ctx(), _handler)
    np.testing.assert_array_equal(reply.content["arrays"]["w"].numpy(), np.full(4, 5.0))
