"""The whole federation under `flwr run .`: DP-SGD, a failing site, the audit log, resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conf import load_config

from ..flwr_run import BIN, flwr_run

pytestmark = pytest.mark.skipif(not (BIN / "flwr").exists(), reason="flwr CLI not installed")

TINY = (
    "federation.min_sites=2 data.image_size=32 federation.rounds_ae=1 federation.rounds_ldm=1 "
    "train.batch_size=4 train.max_steps_ae=2 train.max_steps_ldm=2 model.sample_steps=2 "
    "federation.synthetic_per_class=2 privacy=dp_sgd privacy.epsilon_budget=1000 "
    "evaluation.classifier_epochs=2 evaluation.classifier_per_class=12"
)
PTID = re.compile(r"\d{3}_S_\d{4}")


@pytest.fixture(scope="module")
def federation(cohort_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fed")
    data = root / "cohort"
    shutil.copytree(cohort_dir, data, ignore=shutil.ignore_patterns("truth"))
    bed = data / "site-2" / "genotypes.bed"
    bed.write_bytes(bed.read_bytes()[:-7])  # a damaged array file at one hospital
    run_dir, audit = root / "run", root / "audit"
    overrides = f"data.root={data} run_dir={run_dir} {TINY}"
    proc = flwr_run(root / "flwr", f"overrides='{overrides}' audit-dir='{audit}'", 3)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (run_dir / "metrics.json").exists(), proc.stdout[-6000:]
    return {"root": root, "data": data, "run": run_dir, "audit": audit, "overrides": overrides}


def test_failing_site_is_reported_and_the_others_finish(federation: dict[str, Path]) -> None:
    m = json.loads((federation["run"] / "metrics.json").read_text())
    assert sorted(m["sites"]) == ["site-0", "site-1"]
    assert "site-2" in m["failures"]
    assert any("genotypes.bed" in f for f in m["failures"]["site-2"])
    assert m["rounds"] == {"ae": 1, "ldm": 1}
    assert m["census"]["n-subjects"] == 140  # the census still counted all three sites


def test_run_folder_holds_model_synthetic_set_and_plots(federation: dict[str, Path]) -> None:
    from g2i_models.pipeline import G2IPipeline

    run = federation["run"]
    pipe = G2IPipeline.from_pretrained(run / "model")
    state = json.loads((run / "state.json").read_text())
    assert pipe.scale_factor == pytest.approx(state["scale"])
    manifest = json.loads((run / "synthetic" / "manifest.json").read_text())
    assert [e["label"] for e in manifest["images"]] == ["CN", "CN", "MCI", "MCI", "AD", "AD"]
    import nibabel as nib

    img = nib.load(run / "synthetic" / manifest["images"][0]["file"])
    assert img.shape == (32, 32, 1) and img.affine[2, 3] == manifest["z_mm"]
    for dx in ("CN", "MCI", "AD"):
        assert (run / "synthetic" / f"grid_{dx}.png").stat().st_size > 0
    assert (run / "rounds.png").exists()
    # The sites received the shared set.
    assert (
        len(list((federation["data"] / "prepared").glob("site-*/runs/*/synthetic/synthetic.npz")))
        == 2
    )


def test_sites_score_the_synthetic_set(federation: dict[str, Path]) -> None:
    m = json.loads((federation["run"] / "metrics.json").read_text())
    down, mem = m["downstream"], m["memorisation"]
    assert sorted(down["sites"]) == sorted(mem["sites"]) == ["site-0", "site-1"]
    for site, d in down["sites"].items():
        seeds = list(load_config("fed_tiny").evaluation.classifier_seeds)  # the run's seeds
        assert d["seeds"] == seeds and len(seeds) >= 3 and d["n_test"] > 0
        for cls in ("CN", "MCI", "AD"):
            c = d["counts"][cls]
            # 2 synthetic images per class: topped up to 12, reusing them when short.
            assert c["real"] + c["synthetic"] == max(12, c["real"])
        for arm in ("real", "augmented", "synthetic"):
            assert 0.0 <= d[arm]["accuracy"]["mean"] <= 1.0
            assert len(d[arm]["macro_f1"]["values"]) == len(seeds)
        audit = mem["sites"][site]
        assert audit["n_synthetic"] == 6 and audit["quantile"] == 0.05
        for space in ("pixel", "features"):
            # Aggregates only: no per-image distance or index leaves the site.
            assert set(audit[space]) == {
                "fraction_flagged",
                "synthetic_to_train_q50",
                "test_to_train_q50",
            }
            assert 0.0 <= audit[space]["fraction_flagged"] <= 1.0
    pooled = down["across_sites"]
    assert pooled["sites"] == ["site-0", "site-1"]
    assert pooled["real"]["accuracy"]["mean"] == pytest.approx(
        np.mean([d["real"]["accuracy"]["mean"] for d in down["sites"].values()])
    )


def test_privacy_ledger_accumulates_over_rounds_and_phases(federation: dict[str, Path]) -> None:
    ledger = pd.read_csv(federation["run"] / "privacy_ledger.csv")
    assert set(ledger.site) == {"site-0", "site-1"}
    for _, rows in ledger.groupby("site"):
        rows = rows.sort_values(
            ["phase", "round"], key=lambda c: c.map({"ae": 0, "ldm": 1}) if c.name == "phase" else c
        )
        eps = rows.epsilon.to_numpy()
        assert len(eps) == 2 and eps[1] > eps[0] > 0
        assert list(rows.dp_steps) == [2, 4]


def test_only_weights_counts_and_metrics_leave_a_site(federation: dict[str, Path]) -> None:
    weights = {}
    for phase in ("ae", "ldm"):
        with np.load(federation["run"] / "checkpoints" / f"{phase}.npz") as z:
            weights[phase] = set(z.files)
    allowed_queries = {
        "query.census",
        "query.qc_counts",
        "query.prepare",
        "query.latent_stats",
        "query.synthetic",
        "query.evaluate_synthetic",
        "train",
        "evaluate",
    }
    from preprocessing.panel import load_catalog

    catalog = {c.rsid for c in load_catalog()} | {"APOE_e4"}
    logs = sorted(federation["audit"].glob("*.jsonl"))
    assert len(logs) == 3
    for log in logs:
        for line in log.read_text().splitlines():
            r = json.loads(line)
            assert r["message_type"] in allowed_queries
            assert not PTID.search(line), "a subject ID left the site"
            for name, arrays in r["arrays"].items():
                keys = set(arrays)
                if r["message_type"] == "train":
                    assert keys in (weights["ae"], weights["ldm"])
                elif r["message_type"] == "query.qc_counts":
                    assert {"counts", "groups", "sizes", "meta", "fingerprint"} <= keys
                else:
                    assert (r["message_type"], name, keys) == (
                        "query.prepare",
                        "panel-counts",
                        {"per-dx"},
                    )
                    assert arrays["per-dx"]["shape"][0] == 3  # counts per diagnosis
            if r["message_type"] == "query.evaluate_synthetic":
                # Summaries only, nothing per subject or per synthetic image.
                assert set(r["metrics"]) == {"downstream", "memorisation"}
                for value in r["metrics"]["memorisation"].values():
                    assert isinstance(value, int | float)
            for name, config in r["configs"].items():
                if name == "panel":
                    assert set(config["snps"]) <= catalog
                elif name == "qc":  # the thresholds the site applied, and what it suppressed
                    assert {"mind", "geno", "maf", "hwe", "suppressed"} <= set(config)
                elif name == "receipt":
                    assert list(config) == ["digest"]
                else:
                    assert (name, sorted(config)) == ("site", ["name", "suppressed"])


def test_rerun_resumes_from_the_checkpoint(federation: dict[str, Path]) -> None:
    run = federation["run"]
    before = pd.read_csv(run / "privacy_ledger.csv")
    overrides = str(federation["overrides"]).replace(
        "federation.rounds_ae=1", "federation.rounds_ae=2"
    )
    proc = flwr_run(federation["root"] / "flwr2", f"overrides='{overrides}'", 3)
    assert proc.returncode == 0, proc.stdout[-4000:]
    state = json.loads((run / "state.json").read_text())
    assert state["ae_rounds_done"] == 2 and state["ldm_rounds_done"] == 1
    rounds = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines()]
    # A longer autoencoder phase invalidates the latent scale and the LDM trained on the old
    # autoencoder: the LDM round runs again.
    training = [(r["phase"], r["round"]) for r in rounds if r["round"] is not None]
    assert training == [("ae", 1), ("ldm", 1), ("ae", 2), ("ldm", 1)]
    after = pd.read_csv(run / "privacy_ledger.csv")
    for site in ("site-0", "site-1"):
        # The site's accountant carried on: the resumed round spends on top of both phases.
        assert after[after.site == site].epsilon.max() > before[before.site == site].epsilon.max()
