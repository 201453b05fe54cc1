"""A deployed site fine-tuning the conditioning path under DP-SGD: only the trained subset
goes back, later rounds send only it, and the site lays it over the whole model it keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from client import client_app as cc
from client.task import MissingGlobalModel, global_denoiser, to_wire
from conf import to_object
from contract.messages import ARRAYS, CONFIG, METRICS, RoundConfig
from contract.wire import from_record, to_record
from g2i_models.trainable import trainable_names
from g2i_models.unet import build_denoiser
from tests.client.test_evaluate_synthetic import _ctx, _prepared_site
from tests.server.messages import sent

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PANEL = ["rs1", "rs2"]
PRIVATE = (
    " privacy=dp_sgd privacy.trainable=conditioning privacy.augment_multiplicity=2"
    " privacy.expected_batch_size=4 train.max_steps_ldm=1 train.ldm_epochs=1"
    " model.unet_channels=[16,32] model.unet_attention_levels=[false,true]"
    " model.unet_norm_groups=4 model.snp_embed_dim=16 model.snp_depth=1 model.snp_heads=2"
)


def _site(root: Path, run_dir: str = "/runs/a"):  # noqa: ANN202
    """A prepared site's context for a run of ``run_dir``, holding phase 1's autoencoder."""
    _prepared_site(root)
    ae = next(root.glob("work/**/autoencoder.npz"))
    ctx = _ctx(root)
    ctx.run_config["overrides"] += f"{PRIVATE} run_dir={run_dir}"
    _, _, site = cc._setup(ctx)
    site.run_dir.mkdir(parents=True, exist_ok=True)
    (site.run_dir / "autoencoder.npz").write_bytes(ae.read_bytes())
    return ctx


def _message(kind: str, arrays: dict[str, np.ndarray], server_round: int):  # noqa: ANN202
    config = RoundConfig("ldm", PANEL, seed=0, scale=1.0).to_config()
    content = RecordDict(
        {ARRAYS: to_record(arrays), CONFIG: ConfigRecord({**config, "server-round": server_round})}
    )
    return sent(5, kind, content)


def test_only_the_trained_subset_travels_and_later_rounds_send_only_it(tmp_path: Path) -> None:
    ctx = _site(tmp_path)
    cfg, _, _ = cc._setup(ctx)
    torch.manual_seed(0)
    denoiser = build_denoiser(to_object(cfg.model), len(PANEL), 4, PANEL)
    whole = to_wire(denoiser.state_dict())
    subset = set(trainable_names(denoiser, "conditioning"))

    reply = cc.train(_message("train", whole, 1), ctx)
    back = from_record(reply.content[ARRAYS])
    assert set(back) == subset
    metrics = reply.content[METRICS]
    assert metrics["wire-bytes"] < 0.3 * metrics["wire-bytes-full"]
    assert metrics["wire-bytes"] == sum(a.nbytes for a in back.values())
    assert metrics["epsilon"] > 0

    # Round 2 receives the subset only: the site lays it over the frozen rest it holds.
    _, _, site = cc._setup(ctx)
    held = global_denoiser(site, back)
    assert set(held) == set(whole)
    assert all(np.array_equal(held[k], whole[k]) for k in whole if k not in subset)
    assert all(np.array_equal(held[k], back[k]) for k in subset)
    again = cc.train(_message("train", back, 2), ctx)
    assert set(from_record(again.content[ARRAYS])) == subset


def test_a_subset_for_a_site_without_the_whole_model_is_refused(tmp_path: Path) -> None:
    ctx = _site(tmp_path)
    cfg, _, _ = cc._setup(ctx)
    denoiser = build_denoiser(to_object(cfg.model), len(PANEL), 4, PANEL)
    part = {k: v for k, v in to_wire(denoiser.state_dict()).items() if k.startswith("snp_")}
    with pytest.raises(MissingGlobalModel, match="first round"):
        cc.train(_message("train", part, 2), ctx)
