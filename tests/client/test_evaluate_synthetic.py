"""A site scores the shared synthetic set: only the set it received, once per run, and the
reply holds aggregates only (no per-image distance or index)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client import client_app as cc
from client.policy import ReleaseRefused
from client.task import SyntheticSetMismatch, to_wire
from conf import to_object
from contract.messages import (
    EvaluateSyntheticRequest,
    Query,
    SiteEvaluation,
    SyntheticReceipt,
    SyntheticSet,
)
from contract.wire import unflatten_metrics
from g2i_models.autoencoder import build_autoencoder
from tests.server.messages import context, sent

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 16
SETTINGS = {
    "classifier_per_class": 6,
    "classifier_epochs": 1,
    "classifier_batch_size": 8,
    "classifier_seeds": [0, 1],
}


def _ctx(root: Path, run_id: int = 7):  # noqa: ANN202
    node = {"data-path": str(root / "data" / "site-x"), "work-path": str(root / "work")}
    return context(node, {"experiment": "tiny", "overrides": f"data.image_size={SIZE}"}, run_id)


def _prepared_site(root: Path) -> np.ndarray:
    """A prepared dataset in the cache format (4 train, 2 test subjects per class) and the
    global autoencoder the site keeps after phase 1; returns the images."""
    (root / "data" / "site-x").mkdir(parents=True, exist_ok=True)  # the site's data folder
    cfg, _, site = cc._setup(_ctx(root))
    site.prepared.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = [c for c in range(3) for _ in range(6)]
    splits = ["train"] * 4 + ["test"] * 2
    subjects = [
        {"id": f"SUBJ{i:03d}", "label": c, "split": splits[i % 6], "row": i}
        for i, c in enumerate(labels)
    ]
    manifest = {"subjects": subjects, "snp_names": ["rs1", "rs2"]}
    (site.prepared / "manifest.json").write_text(json.dumps(manifest))
    images = rng.random((18, 1, SIZE, SIZE), dtype=np.float32)
    np.save(site.prepared / "images.npy", images)
    np.save(site.prepared / "genotypes.npy", rng.integers(0, 3, (18, 2)).astype(np.int8))
    torch.manual_seed(0)
    ae = build_autoencoder(to_object(cfg.model), SIZE)
    site.run_dir.mkdir(parents=True)
    np.savez(site.run_dir / "autoencoder.npz", **to_wire(ae.state_dict()))
    return images


def _synthetic(images: np.ndarray) -> SyntheticSet:
    rng = np.random.default_rng(1)
    synth = rng.random((9, 1, SIZE, SIZE), dtype=np.float32) + 0.25
    synth[0] = images[0]  # a copy of a training image
    return SyntheticSet(synth, np.repeat(np.arange(3), 3), np.zeros((9, 2), np.int8), ["a", "b"])


def _share(root: Path, synthetic: SyntheticSet, run_id: int = 7) -> str:
    msg = sent(5, Query.SYNTHETIC.message_type, synthetic.to_record(), run_id)
    return SyntheticReceipt.from_record(
        cc.receive_synthetic(msg, _ctx(root, run_id)).content
    ).digest


def _evaluate(root: Path, digest: str, run_id: int = 7) -> SiteEvaluation:
    request = EvaluateSyntheticRequest(digest, SETTINGS).to_record()
    msg = sent(5, Query.EVALUATE_SYNTHETIC.message_type, request, run_id)
    return SiteEvaluation.from_record(cc.evaluate_synthetic(msg, _ctx(root, run_id)).content)


def test_reply_holds_aggregates_only(tmp_path: Path) -> None:
    images = _prepared_site(tmp_path)
    synthetic = _synthetic(images)
    digest = _share(tmp_path, synthetic)
    assert digest == synthetic.digest()
    reply = _evaluate(tmp_path, digest)
    audit = unflatten_metrics(reply.memorisation)
    assert set(audit["pixel"]) == {
        "fraction_flagged",
        "synthetic_to_train_q50",
        "test_to_train_q50",
    }
    assert audit["pixel"]["fraction_flagged"] == pytest.approx(1 / 9, abs=0.01)
    for record in (reply.memorisation, reply.downstream):
        text = json.dumps(record)
        assert "SUBJ" not in text and "flagged/" not in text and "distance" not in text
    assert all(not isinstance(v, list) for v in reply.memorisation.values())
    down = unflatten_metrics(reply.downstream)
    assert down["n_train"] == 12 and down["n_test"] == 6 and down["seeds"] == [0, 1]
    # The full audit (flagged images, distances) stays at the site.
    _, _, site = cc._setup(_ctx(tmp_path))
    full = json.loads((site.run_dir / "synthetic" / "audit.json").read_text())
    assert [f["synthetic_index"] for f in full["pixel"]["flagged"]] == [0]


def test_audit_refuses_foreign_images_and_runs_once(tmp_path: Path) -> None:
    images = _prepared_site(tmp_path)
    digest = _share(tmp_path, _synthetic(images))
    probes = _synthetic(images)
    probes.images[1:] = images[0] + 1e-3  # probes around a training image
    with pytest.raises(SyntheticSetMismatch):
        _evaluate(tmp_path, probes.digest())
    with pytest.raises(ReleaseRefused, match="once per run"):
        _share(tmp_path, probes)  # a second "synthetic set" in the same run
    _evaluate(tmp_path, digest)
    with pytest.raises(ReleaseRefused, match="once per run"):
        _evaluate(tmp_path, digest)


def test_audit_count_is_capped_over_the_site_life(tmp_path: Path) -> None:
    images = _prepared_site(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text("audit_max_runs: 1\n")
    ctx = _ctx(tmp_path)
    ctx.node_config["policy-file"] = str(policy)
    synthetic = _synthetic(images)
    for run_id in (7, 8):
        ctx.run_id = run_id
        msg = sent(5, Query.SYNTHETIC.message_type, synthetic.to_record(), run_id)
        cc.receive_synthetic(msg, ctx)
        request = EvaluateSyntheticRequest(synthetic.digest(), SETTINGS).to_record()
        evaluate = sent(5, Query.EVALUATE_SYNTHETIC.message_type, request, run_id)
        if run_id == 7:
            cc.evaluate_synthetic(evaluate, ctx)
        else:
            with pytest.raises(ReleaseRefused, match="most its policy allows"):
                cc.evaluate_synthetic(evaluate, ctx)
