"""DP-SGD at a deployed site: the server's messages do not determine the noise, no two
rounds reuse it, and the epsilon ledger belongs to the site, not to the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from client import client_app as cc
from client.task import to_wire
from conf import to_object
from contract.messages import ARRAYS, CONFIG, RoundConfig
from contract.wire import from_record, to_record
from g2i_models.autoencoder import build_autoencoder
from g2i_models.privacy import PrivacyBudgetExceeded, PrivacyLedger
from tests.client.test_evaluate_synthetic import SIZE, _ctx, _prepared_site
from tests.server.messages import sent

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = "train.max_steps_ae=1 train.batch_size=4 train.ae_epochs=1"


def _train(root: Path, run_dir: str = "/runs/a") -> dict[str, np.ndarray]:
    ctx = _ctx(root)
    ctx.run_config["overrides"] += f" {STEPS} run_dir={run_dir}"
    cfg, _, _ = cc._setup(ctx)
    torch.manual_seed(0)
    weights = to_wire(build_autoencoder(to_object(cfg.model), SIZE).state_dict())
    config = RoundConfig("ae", ["rs1", "rs2"], seed=0).to_config()
    content = RecordDict(
        {ARRAYS: to_record(weights), CONFIG: ConfigRecord({**config, "server-round": 1})}
    )
    reply = cc.train(sent(5, "train", content), ctx)
    return from_record(reply.content[ARRAYS])


def test_same_messages_give_different_noise_and_ledger_is_the_sites(tmp_path: Path) -> None:
    _prepared_site(tmp_path)
    a = _train(tmp_path)  # the identical message twice: same seed, round, weights
    b = _train(tmp_path)
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff > 1e-4, "the noise repeated: it is fixed by what the server sent"
    _, _, site = cc._setup(_ctx(tmp_path))
    assert PrivacyLedger.load(site.ledger).steps == 2
    _train(tmp_path, run_dir="/runs/fresh-name")  # a new run name spends the same budget
    assert PrivacyLedger.load(site.ledger).steps == 3


def test_lifetime_budget_refuses_once_spent(tmp_path: Path) -> None:
    _prepared_site(tmp_path)
    _, _, site = cc._setup(_ctx(tmp_path))
    PrivacyLedger([(1.0, 0.5, 400)]).save(site.ledger)  # an earlier run spent most of it
    with pytest.raises(PrivacyBudgetExceeded):
        _train(tmp_path, run_dir="/runs/another")
