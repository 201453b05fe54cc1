"""A site scores the shared synthetic set: the reply holds summaries only."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord

from client import task
from conf.schema import DataConfig, EvaluationConfig
from g2i_models.autoencoder import build_autoencoder
from tests.g2i_models.tiny import IMAGE_SIZE, tiny_model_config

# Tiny networks: thread start-up and contention cost more than they save.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _prepared_site(root: Path) -> tuple[task.Site, np.ndarray]:
    """A prepared dataset written in the cache format: 4 train and 2 test subjects per class,
    the global autoencoder the site keeps after phase 1, and a stored synthetic set."""
    site = task.resolve_site(root / "data" / "site-x", str(root / "work"), "run")
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
    images = rng.random((18, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    np.save(site.prepared / "images.npy", images)
    np.save(site.prepared / "genotypes.npy", rng.integers(0, 3, (18, 2)).astype(np.int8))
    torch.manual_seed(0)
    ae = build_autoencoder(tiny_model_config(), IMAGE_SIZE)
    site.run_dir.mkdir(parents=True)
    np.savez(site.run_dir / "autoencoder.npz", **task.to_wire(ae.state_dict()))
    synth = rng.random((9, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32) + 0.25
    synth[0] = images[0]  # a copy of a training image (subject 0 is in the train split)
    synth_labels = np.repeat(np.arange(3), 3)
    task.store_synthetic(site, synth, synth_labels, np.zeros((9, 2), np.int8), ["rs1", "rs2"])
    return site, images


def test_site_reply_holds_only_summaries(tmp_path: Path) -> None:
    site, images = _prepared_site(tmp_path)
    evaluation = replace(
        EvaluationConfig(),
        classifier_per_class=6,
        classifier_epochs=1,
        classifier_batch_size=8,
        classifier_seeds=[0, 1],
    )
    # The settings travel as a plain ConfigRecord and come back equal.
    config = ConfigRecord(task.evaluation_to_config(evaluation))
    assert task.evaluation_from_config(config) == evaluation

    report = task.evaluate_synthetic(
        site,
        task.evaluation_from_config(config),
        DataConfig(image_size=IMAGE_SIZE),
        tiny_model_config(),
        "cpu",
    )
    assert set(report) == {"downstream", "memorisation"}
    for flat in report.values():
        MetricRecord(flat)  # valid record values
        for key, value in flat.items():
            assert isinstance(value, int | float | list), key
            if isinstance(value, list):
                assert len(value) <= 9 and all(isinstance(v, int | float) for v in value), key
    text = json.dumps(report)
    assert "SUBJ" not in text
    train_pixels = set(images[[0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15]].astype(float).ravel())
    floats = [v for f in report.values() for x in f.values() for v in np.ravel(x)]
    assert not train_pixels & {float(v) for v in floats}

    down = task.unflatten_metrics(report["downstream"])
    assert down["n_train"] == 12 and down["n_test"] == 6 and down["seeds"] == [0, 1]
    assert down["counts"]["CN"] == {
        "real": 4,
        "synthetic": 2,
        "unique_synthetic": 2,
        "with_replacement": 0,
        "shortfall": 0,
    }
    assert 0.0 <= down["augmented"]["accuracy"]["mean"] <= 1.0
    assert len(down["real"]["macro_f1"]["values"]) == 2
    audit = task.unflatten_metrics(report["memorisation"])
    assert (audit["n_synthetic"], audit["n_train"], audit["n_test"]) == (9, 12, 6)
    # Pixels: the planted copy and nothing else. Features (the global autoencoder's encoder
    # means, here an untrained one): the copy at distance 0, first in the list.
    assert [f["synthetic_index"] for f in audit["pixel"]["flagged"]] == [0]
    for space in ("pixel", "features"):
        flagged = audit[space]["flagged"]
        assert flagged[0]["synthetic_index"] == 0 and flagged[0]["distance"] < 1e-6
