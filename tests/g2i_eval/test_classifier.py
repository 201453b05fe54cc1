from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from conf.schema import EvaluationConfig
from g2i_eval.classifier import (
    METRICS,
    PaperCNN,
    class_weights,
    classification_metrics,
    downstream_comparison,
    pool_sites,
    predict,
    stratified_holdout,
    synthetic_needed,
    top_up,
    train_classifier,
)

# Tiny networks: thread start-up and contention cost more than they save.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def separable(n_per_class: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a bright square in a class-specific corner."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    x = 0.3 * torch.rand(len(labels), 1, size, size, generator=g)
    h = size // 2
    corners = [(0, 0), (0, h), (h, 0)]
    for i, c in enumerate(labels.tolist()):
        r, col = corners[c]
        x[i, 0, r : r + h, col : col + h] += 0.6
    return x, labels


@pytest.mark.parametrize("size", [16, 32, 64])
def test_paper_cnn_logits_for_any_size(size: int) -> None:
    model = PaperCNN()
    assert model(torch.rand(5, 1, size, size)).shape == (5, 3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 2 and len(linears) == 1


def test_top_up_exact_counts_and_keeps_every_real_image() -> None:
    real_y = torch.tensor([0] * 3 + [1] * 5 + [2] * 12)
    real_x = torch.rand(len(real_y), 1, 4, 4)
    synth_y = torch.tensor([0] * 10 + [1] * 2 + [2] * 4)
    synth_x = torch.rand(len(synth_y), 1, 4, 4) + 10.0  # tell synthetic rows apart
    x, y, counts = top_up(real_x, real_y, synth_x, synth_y, per_class=8, seed=0)

    assert torch.equal(x[: len(real_y)], real_x) and torch.equal(y[: len(real_y)], real_y)
    assert torch.bincount(y).tolist() == [8, 8, 12]
    assert counts["CN"] == {
        "real": 3,
        "synthetic": 5,
        "unique_synthetic": 5,
        "with_replacement": 0,
        "shortfall": 0,
    }
    # MCI needs 3 but only 2 exist: both are used, one twice.
    assert counts["MCI"] == {
        "real": 5,
        "synthetic": 3,
        "unique_synthetic": 2,
        "with_replacement": 1,
        "shortfall": 0,
    }
    assert counts["AD"]["synthetic"] == 0 and counts["AD"]["real"] == 12
    # Every added row is a synthetic image of the class it is labelled with.
    added_x, added_y = x[len(real_y) :], y[len(real_y) :]
    for xi, yi in zip(added_x, added_y, strict=True):
        match = [j for j in range(len(synth_y)) if torch.equal(synth_x[j], xi)]
        assert len(match) == 1 and synth_y[match[0]] == yi
    # CN draws are without replacement and depend on the seed only.
    x2, _, _ = top_up(real_x, real_y, synth_x, synth_y, per_class=8, seed=0)
    assert torch.equal(x, x2)


def test_top_up_without_synthetic_images_records_the_shortfall() -> None:
    real_y = torch.tensor([0, 0, 1, 2])
    synth_y = torch.tensor([1, 1, 1])
    x, y, counts = top_up(
        torch.rand(4, 1, 4, 4), real_y, torch.rand(3, 1, 4, 4), synth_y, per_class=3, seed=1
    )
    assert counts["CN"]["shortfall"] == 1 and counts["AD"]["shortfall"] == 2
    assert counts["MCI"]["synthetic"] == 2 and torch.bincount(y).tolist() == [2, 3, 1]


def hand_metrics(t: np.ndarray, p: np.ndarray, k: int = 3) -> dict[str, float]:
    cm = np.zeros((k, k))
    np.add.at(cm, (t, p), 1)
    tp = np.diag(cm)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(k), where=cm.sum(0) > 0)
    recall = tp / cm.sum(1)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros(k),
        where=precision + recall > 0,
    )
    return {
        "accuracy": tp.sum() / cm.sum(),
        "macro_precision": precision.mean(),
        "macro_recall": recall.mean(),
        "macro_f1": f1.mean(),
    }


def test_metrics_match_a_hand_computed_confusion_matrix() -> None:
    t = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    p = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    m = classification_metrics(t, p)
    # class 0: P 1, R 2/3; class 1: P 2/3, R 1; class 2: P 1, R 1.
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert m["macro_precision"] == pytest.approx(8 / 9)
    assert m["macro_recall"] == pytest.approx(8 / 9)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.8 + 1.0) / 3)
    rng = np.random.default_rng(0)
    t2, p2 = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    got = classification_metrics(torch.from_numpy(t2), torch.from_numpy(p2))
    for k, v in hand_metrics(t2, p2).items():
        assert got[k] == pytest.approx(v, abs=1e-6)


def test_classifier_learns_a_separable_problem() -> None:
    cfg = replace(EvaluationConfig(), classifier_epochs=8, classifier_batch_size=16)
    x, y = separable(20, 16, seed=0)
    x_test, y_test = separable(10, 16, seed=1)
    model = train_classifier(x, y, cfg, seed=0, device="cpu")
    acc = classification_metrics(y_test, predict(model, x_test, device="cpu"))["accuracy"]
    assert acc >= 0.9
    # Same seed, same model.
    again = train_classifier(x, y, cfg, seed=0, device="cpu")
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_class_weights_and_stratified_holdout() -> None:
    y = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(y)
    assert w.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    keep, held = stratified_holdout(y, 0.34, seed=0)
    assert sorted(keep.tolist() + held.tolist()) == list(range(10))
    assert torch.bincount(y[held], minlength=3).tolist() == [2, 1, 0]


def test_class_weighting_stops_majority_collapse() -> None:
    """On an imbalanced set with a weak signal, the unweighted loss favours the majority
    class; class weighting makes the minority classes predicted."""
    g = torch.Generator().manual_seed(0)
    n = [60, 12, 12]
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(n)])
    x = torch.rand(len(y), 1, 8, 8, generator=g)
    x[:, :, :2, :2] += 0.35 * y[:, None, None, None].float()  # weak class signal
    cfg = replace(EvaluationConfig(), classifier_epochs=6, classifier_batch_size=16)
    predicted = predict(train_classifier(x, y, cfg, seed=0, device="cpu"), x, device="cpu")
    assert set(predicted.tolist()) != {0}


def test_downstream_comparison_reports_both_arms_over_seeds() -> None:
    cfg = replace(
        EvaluationConfig(),
        classifier_epochs=2,
        classifier_batch_size=16,
        classifier_per_class=12,
        classifier_seeds=[0, 1],
    )
    x, y = separable(4, 16, seed=0)
    xs, ys = separable(10, 16, seed=2)
    xt, yt = separable(5, 16, seed=1)
    r = downstream_comparison(x, y, xt, yt, xs, ys, cfg, device="cpu")
    assert r["n_test"] == 15 and r["n_train"] == 12 and r["seeds"] == [0, 1]
    # One of the 4 real AD images is held out for early stopping (20%, at least one).
    assert r["counts"]["AD"] == {
        "real": 3,
        "synthetic": 9,
        "unique_synthetic": 9,
        "with_replacement": 0,
        "shortfall": 0,
    }
    for arm in ("real", "augmented", "synthetic"):
        for m in METRICS:
            s = r[arm][m]
            assert len(s["values"]) == 2 and 0.0 <= s["mean"] <= 1.0
            assert s["mean"] == pytest.approx(np.mean(s["values"]))
            assert s["sd"] == pytest.approx(np.std(s["values"], ddof=1))
        assert r["gain"]["accuracy"] == pytest.approx(
            r["augmented"]["accuracy"]["mean"] - r["real"]["accuracy"]["mean"]
        )
    for m in METRICS:
        g = r["gain_paired"][m]
        diffs = np.subtract(r["augmented"][m]["values"], r["real"][m]["values"])
        assert g["values"] == pytest.approx(diffs.tolist())
        half = stats.t.ppf(0.975, 1) * np.std(diffs, ddof=1) / np.sqrt(2)
        assert g["ci"] == pytest.approx([diffs.mean() - half, diffs.mean() + half])
    pooled = pool_sites({"a": r, "b": r})
    assert pooled["sites"] == ["a", "b"]
    assert pooled["real"]["macro_f1"]["mean"] == pytest.approx(r["real"]["macro_f1"]["mean"])
    assert pooled["real"]["macro_f1"]["sd"] == pytest.approx(0.0)
    synthetic_only = r["synthetic"]["accuracy"]["mean"]
    assert pooled["synthetic"]["accuracy"]["mean"] == pytest.approx(synthetic_only)


def test_synthetic_only_arm_reads_whether_the_synthetic_labels_carry_the_diagnosis() -> None:
    """The synthetic-only arm is the classifier trained on the synthetic set alone, stopped on
    the same held-out real images: with synthetic images that show their class it scores on
    real test images as the real-only arm does; with the same images under shuffled labels
    it falls towards chance. An empty synthetic set trains no such arm."""
    cfg = replace(
        EvaluationConfig(),
        classifier_epochs=8,
        classifier_batch_size=16,
        classifier_per_class=20,
        classifier_seeds=[0, 1],
    )
    x, y = separable(10, 16, seed=0)
    xs, ys = separable(20, 16, seed=2)
    xt, yt = separable(20, 16, seed=1)
    faithful = downstream_comparison(x, y, xt, yt, xs, ys, cfg, device="cpu")
    shuffled_labels = ys[torch.randperm(len(ys), generator=torch.Generator().manual_seed(3))]
    shuffled = downstream_comparison(x, y, xt, yt, xs, shuffled_labels, cfg, device="cpu")
    assert faithful["synthetic"]["accuracy"]["mean"] >= 0.9
    assert shuffled["synthetic"]["accuracy"]["mean"] <= 0.6
    # The same classifier as one trained on the synthetic images directly (seed 0).
    keep, held = stratified_holdout(y, cfg.classifier_val_fraction, 0)
    direct = train_classifier(xs, ys, cfg, 0, "cpu", val_images=x[held], val_labels=y[held])
    accuracy = classification_metrics(yt, predict(direct, xt, device="cpu"))["accuracy"]
    assert faithful["synthetic"]["accuracy"]["values"][0] == pytest.approx(accuracy)
    empty = downstream_comparison(x, y, xt, yt, xs[:0], ys[:0], cfg, device="cpu")
    assert "synthetic" not in empty and "synthetic" not in pool_sites({"a": empty, "b": faithful})


@pytest.mark.parametrize("counts", [(165, 239, 96), (3, 40, 2), (10, 10, 10), (1, 30, 7)])
def test_synthetic_needed_tops_up_the_fit_set_without_reuse(counts: tuple[int, ...]) -> None:
    """Generating ``synthetic_needed`` images per class is exactly enough for the top-up of
    the fit set (the training images less the validation hold-out) to draw none twice, for
    every classifier seed; one fewer makes the smallest fit class reuse one."""
    cfg = replace(EvaluationConfig(), classifier_per_class=250, classifier_val_fraction=0.2)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.zeros(len(y), 1, 2, 2)
    need = synthetic_needed(y, cfg)
    for seed in (0, 1, 2):
        keep, _ = stratified_holdout(y, cfg.classifier_val_fraction, seed)
        for per_class, reused in ((need, False), (need - 1, True)):
            sy = torch.arange(3).repeat_interleave(per_class)
            _, _, c = top_up(x[keep], y[keep], torch.zeros(len(sy), 1, 2, 2), sy, 250, seed)
            assert any(v["with_replacement"] for v in c.values()) is reused
            assert all(v["real"] + v["synthetic"] == 250 for v in c.values())
