"""A curious or malicious coordinator, replayed against the site's real handlers: every
attack below worked before the site policy; each test fails if it works again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from client import client_app as cc
from client.audit import audit_mod
from client.errors import sanitise, sanitising_mod
from client.policy import PolicyRefusal, ReleaseRefused
from contract.messages import CensusReply, QCCountsReply, Query
from preprocessing.federated_qc import site_counts
from tests.server.messages import context, sent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def hospital(cohort_dir: Path, tmp_path: Path) -> dict:
    """A deployed site: its data, work folder and policy file are its own."""
    data = tmp_path / "hospital" / "site-1"
    shutil.copytree(cohort_dir / "site-1", data)
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_cell_size: 10\n")
    node = {"data-path": str(data), "work-path": str(tmp_path / "work"), "policy-file": str(policy)}
    return {"node": node, "data": data, "policy": policy, "work": tmp_path / "work"}


def _ctx(hospital: dict, overrides: str = "", run_id: int = 7, **run: str):  # noqa: ANN202
    return context(hospital["node"], {"experiment": "tiny", "overrides": overrides, **run}, run_id)


@pytest.mark.parametrize(
    "override",
    [
        "data.cache_dir=/tmp/elsewhere",  # where the site writes
        "data.qc.mind=0.2",  # the sample set behind the QC counts
        "data.val_fraction=0.5",  # the training split behind per-diagnosis counts
        "privacy=none",  # DP off
        "privacy.mode=none",
        "privacy.epsilon_budget=1000",  # a larger budget
        "privacy.delta=0.5",
        "privacy.noise_multiplier=0.1",  # below the policy's noise floor
        "privacy.target_epsilon=1000",
        "+data.extra=1",  # keys the schema does not have
        "hydra.run.dir=/tmp",
    ],
)
def test_server_override_outside_the_policy_is_refused(hospital: dict, override: str) -> None:
    msg = sent(5, Query.CENSUS.message_type)
    with pytest.raises(PolicyRefusal):
        cc.census(msg, _ctx(hospital, override))


def test_experiment_path_outside_the_package_is_refused(hospital: dict) -> None:
    msg = sent(5, Query.CENSUS.message_type)
    for experiment in ("../../../tmp/evil", "/etc/passwd", "tiny/../paper"):
        ctx = context(hospital["node"], {"experiment": experiment, "overrides": ""})
        with pytest.raises(PolicyRefusal, match="presets"):
            cc.census(msg, ctx)


def test_env_interpolation_is_refused_and_never_reaches_the_reply(
    hospital: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSPITAL_DB_PASSWORD", "s3cr3t-value-42")
    ctx = _ctx(hospital, "data.image_size=${oc.env:HOSPITAL_DB_PASSWORD}")
    reply = sanitising_mod(sent(5, Query.CENSUS.message_type), ctx, cc.census)
    assert reply.has_error()
    assert reply.error.reason.startswith("PolicyRefusal:")
    assert "s3cr3t-value-42" not in reply.error.reason


def test_allowed_hyper_parameters_pass_within_the_policy(hospital: dict) -> None:
    cfg, runtime, site = cc._setup(
        _ctx(hospital, "train.max_steps_ae=2 privacy=dp_sgd privacy.noise_multiplier=1.5")
    )
    from client.policy import site_privacy
    from conf import to_object

    privacy = site_privacy(to_object(cfg.privacy), runtime)
    assert (privacy.mode, privacy.noise_multiplier) == ("dp_sgd", 1.5)
    assert privacy.epsilon_budget == runtime.policy.epsilon_budget == 10.0
    assert cfg.train.max_steps_ae == 2


def test_dp_policy_applies_when_the_server_says_nothing(hospital: dict) -> None:
    """The tiny preset has privacy=none: a DP site trains with DP all the same."""
    from client.policy import site_privacy
    from conf import to_object

    cfg, runtime, _ = cc._setup(_ctx(hospital))
    assert cfg.privacy.mode == "none"
    assert site_privacy(to_object(cfg.privacy), runtime).mode == "dp_sgd"


def test_typo_in_privacy_mode_is_refused_not_ignored(hospital: dict) -> None:
    sim = context({"partition-id": 1}, {"experiment": "tiny", "overrides": "privacy.mode=dp_sdg"})
    with pytest.raises(PolicyRefusal, match="do not compose"):
        cc.census(sent(5, Query.CENSUS.message_type), sim)


def test_a_new_run_dir_keeps_the_ledger(hospital: dict) -> None:
    _, _, a = cc._setup(_ctx(hospital, "run_dir=/runs/first"))
    _, _, b = cc._setup(_ctx(hospital, "run_dir=/runs/renamed name=other"))
    assert a.run_dir != b.run_dir  # run state may differ by run ...
    assert a.ledger == b.ledger  # ... the privacy ledger does not
    assert a.ledger.is_relative_to(hospital["work"])


def test_server_cannot_choose_the_audit_folder(hospital: dict, tmp_path: Path) -> None:
    target = tmp_path / "server-chosen"
    ctx = _ctx(hospital, **{"audit-dir": str(target)})
    audit_mod(sent(5, Query.CENSUS.message_type), ctx, cc.census)
    assert not target.exists()


def test_qc_counts_once_per_run_and_not_with_another_mind(hospital: dict) -> None:
    msg = sent(5, Query.QC_COUNTS.message_type)
    first = QCCountsReply.from_record(cc.qc_counts(msg, _ctx(hospital)).content)
    assert first.thresholds["mind"] == 0.05
    with pytest.raises(ReleaseRefused, match="once per run"):
        cc.qc_counts(msg, _ctx(hospital))
    with pytest.raises(PolicyRefusal):
        cc.qc_counts(msg, _ctx(hospital, "data.qc.mind=0.2", run_id=8))
    # A new run gets the same counts: the sample set is the site's, nothing to difference.
    again = QCCountsReply.from_record(cc.qc_counts(msg, _ctx(hospital, run_id=9)).content)
    np.testing.assert_array_equal(again.counts.counts, first.counts.counts)


def test_qc_counts_equal_plain_counts_when_no_cell_is_small(hospital: dict) -> None:
    hospital["policy"].write_text("min_cell_size: 1\n")
    reply = QCCountsReply.from_record(
        cc.qc_counts(sent(5, Query.QC_COUNTS.message_type), _ctx(hospital)).content
    )
    from conf.schema import QCConfig

    plain = site_counts(hospital["data"] / "genotypes", QCConfig())
    assert reply.suppressed == []
    np.testing.assert_array_equal(reply.counts.counts[plain.present], plain.counts[plain.present])


def test_groups_below_the_cell_size_yield_no_counts(hospital: dict) -> None:
    hospital["policy"].write_text("min_cell_size: 1000\n")  # larger than every group
    reply = QCCountsReply.from_record(
        cc.qc_counts(sent(5, Query.QC_COUNTS.message_type), _ctx(hospital)).content
    )
    assert not reply.counts.counts.any() and not reply.counts.sizes.any()
    assert any("suppressed" in note for note in reply.suppressed)


def test_small_group_by_differencing_is_never_released() -> None:
    """Female controls = founder controls - male founder controls: a group of 3 is not
    released, not even as the difference of two groups of 10 or more."""
    from itertools import combinations

    from preprocessing.federated_qc import SiteCounts, suppress_small_cells

    n, n_snps = 40, 5
    idx = np.arange(n)
    male = idx < 20
    founder = idx >= 3
    control = (idx >= 7) & (idx < 20) | (idx >= 37)  # 13 male controls, 3 female
    fc = founder & control
    masks = np.stack([idx >= 0, founder, fc, male, male & founder, male & fc])
    geno = np.random.default_rng(0).integers(0, 4, (n, n_snps))
    counts = np.stack([[(geno[m] == c).sum(axis=0) for c in range(4)] for m in masks])
    sizes = masks.sum(axis=1)
    site = SiteCounts(
        counts=counts.astype(np.int64),
        chrom=np.full(n_snps, 23, np.int16),
        bim_fingerprint="00",
        n_samples=n,
        n_removed_mind=0,
        case_control=True,
        n_controls=int(control.sum()),
        sizes=sizes,
        present=np.ones(6, bool),
    )
    assert sizes[2] - sizes[5] == 3  # the attack: two released groups differing by 3
    out, notes = suppress_small_cells(site, masks, 10)
    assert notes
    released = [g for g in range(6) if out.sizes[g] > 0]
    for g in released:
        assert out.sizes[g] >= 10
    for a, b in combinations(released, 2):
        diff = out.counts[a] - out.counts[b]
        rows = int(abs(out.sizes[a] - out.sizes[b]))
        assert rows == 0 or rows >= 10 or not diff.any(), (a, b)
    unchanged, none = suppress_small_cells(site, masks, 1)
    assert none == [] and np.array_equal(unchanged.counts, site.counts)


def test_census_suppresses_small_counts(hospital: dict) -> None:
    hospital["policy"].write_text("min_cell_size: 30\n")
    reply = CensusReply.from_record(
        cc.census(sent(5, Query.CENSUS.message_type), _ctx(hospital)).content
    )
    assert reply.suppressed and all(reply.counts[k] == 0 for k in reply.suppressed)
    assert all(v == 0 or v >= 30 for v in reply.counts.values())


def test_error_reply_holds_no_subject_id_path_allele_or_env(
    hospital: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SITE_TOKEN", "tok-4242-abcd")
    fam = (hospital["data"] / "genotypes.fam").read_text().split()
    subject = fam[1]

    def leaky(msg, ctx):  # noqa: ANN001, ANN202 - a handler failing with everything in it
        raise ValueError(
            f"subject {subject} (011_S_0002) at {hospital['data']}/clinical.csv: APOE e3/e4, "
            f"A/G, token tok-4242-abcd"
        )

    reply = sanitising_mod(sent(5, Query.PREPARE.message_type), _ctx(hospital), leaky)
    reason = reply.error.reason
    assert reason.startswith("ValueError:") and "clinical.csv" in reason
    for secret in (subject, "011_S_0002", str(hospital["data"]), "e3/e4", "A/G", "tok-4242"):
        assert secret not in reason, secret


def test_a_real_failure_names_the_file_not_the_hospital_path(hospital: dict) -> None:
    bed = hospital["data"] / "genotypes.bed"
    bed.write_bytes(bed.read_bytes()[:-7])
    reply = sanitising_mod(sent(5, Query.QC_COUNTS.message_type), _ctx(hospital), cc.qc_counts)
    reason = reply.error.reason
    assert "genotypes.bed" in reason and str(hospital["data"].parent) not in reason
    assert "/" not in reason.split(":", 1)[1]


def test_sanitise_keeps_a_useful_summary() -> None:
    text = "GenotypeFormatError: /srv/h/site-a/genotypes.bed: 7 bytes short; re-export it"
    assert sanitise(text) == "GenotypeFormatError: genotypes.bed: 7 bytes short; re-export it"


def test_site_policy_file_is_checked(hospital: dict) -> None:
    hospital["policy"].write_text("privacy_mode: dp_sgd\nmin_noise_multiplier: 0\n")
    with pytest.raises(ValueError, match="min_noise_multiplier"):
        cc._setup(_ctx(hospital))
    hospital["policy"].write_text("privacy_mod: none\n")  # a typo in the site's own file
    with pytest.raises(Exception, match="privacy_mod"):
        cc._setup(_ctx(hospital))


def test_release_log_lives_on_the_site_disk(hospital: dict) -> None:
    cc.qc_counts(sent(5, Query.QC_COUNTS.message_type), _ctx(hospital))
    log = json.loads((hospital["work"] / "site-1" / "releases.json").read_text())
    assert log["runs"]["7"][Query.QC_COUNTS] is True


# ---- calibrated noise on released counts (policy count_noise_multiplier) -------------------


def _ledger(hospital: dict):  # noqa: ANN202
    from g2i_models.privacy import PrivacyLedger

    return PrivacyLedger.load(hospital["work"] / "site-1" / "privacy" / "ledger.json")


def test_noised_counts_are_charged_to_the_lifetime_ledger_and_stop_at_the_budget(
    hospital: dict,
) -> None:
    """Each count release costs alpha / (2 z^2) in RDP, composed with DP-SGD's spend in the
    site's lifetime ledger; the release that would pass the budget is refused and costs
    nothing."""
    from g2i_models.privacy import PrivacyBudgetExceeded, PrivacyLedger

    z, delta = 4.0, 1e-5
    one, two, three = (
        PrivacyLedger(releases=[(z, "census")] * k).epsilon(delta) for k in (1, 2, 3)
    )
    assert 0 < one < two < three
    # Renyi DP of the Gaussian mechanism, converted with the classic bound: an upper bound.
    alphas = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
    classic = float(np.min(alphas / (2 * z**2) + np.log(1 / delta) / (alphas - 1)))
    assert one <= classic
    hospital["policy"].write_text(
        f"min_cell_size: 10\ncount_noise_multiplier: {z}\nepsilon_budget: {(two + three) / 2}\n"
    )
    msg = sent(5, Query.CENSUS.message_type)
    first = CensusReply.from_record(cc.census(msg, _ctx(hospital, run_id=1)).content)
    assert any("noised" in note and f"{one:.3f}" in note for note in first.suppressed)
    with pytest.raises(ReleaseRefused, match="once per run"):  # no draining it in one run
        cc.census(msg, _ctx(hospital, run_id=1))
    cc.census(msg, _ctx(hospital, run_id=2))  # a new run: the lifetime ledger carries on
    assert [kind for _, kind in _ledger(hospital).releases] == ["census", "census"]
    assert _ledger(hospital).epsilon(delta) == pytest.approx(two)
    with pytest.raises(PrivacyBudgetExceeded, match="past the budget"):
        cc.qc_counts(sent(5, Query.QC_COUNTS.message_type), _ctx(hospital, run_id=3))
    assert len(_ledger(hospital).releases) == 2


def test_the_server_cannot_reproduce_or_average_away_count_noise(hospital: dict) -> None:
    """Identical requests in two runs get independent noise of the stated size: nothing the
    server sends fixes the draws, and only the ledger's budget limits how many it gets."""
    from conf.schema import QCConfig
    from preprocessing.federated_qc import counts_sensitivity

    z = 0.05
    hospital["policy"].write_text(
        f"min_cell_size: 1\ncount_noise_multiplier: {z}\nepsilon_budget: 0\n"  # 0: no cap
    )
    msg = sent(5, Query.QC_COUNTS.message_type)
    a, b = (
        QCCountsReply.from_record(cc.qc_counts(msg, _ctx(hospital, run_id=r)).content).counts
        for r in (1, 2)
    )
    exact = site_counts(hospital["data"] / "genotypes", QCConfig())
    g = int(np.flatnonzero(exact.present)[0])
    std = z * counts_sensitivity(exact)
    da = a.counts[g, :3] - exact.counts[g, :3]
    db = b.counts[g, :3] - exact.counts[g, :3]
    assert not np.array_equal(a.counts, b.counts)
    # Post-processing touches cells near 0 (clipping) and each SNP's largest call count
    # (calls may not exceed the noisy size); elsewhere the draws are N(0, (z x sensitivity)^2)
    # and independent between the two runs.
    calls = exact.counts[g, :3]
    top = calls == calls.max(axis=0)
    away = (calls > 3 * std) & ~top
    assert away.sum() > 100
    assert abs(np.corrcoef(da[away], db[away])[0, 1]) < 0.1
    assert np.std(da[away]) == pytest.approx(std, rel=0.15)
    assert (a.counts >= 0).all() and (a.sizes[g] >= a.counts[g, :3].sum(axis=0)).all()


def test_per_diagnosis_counts_are_noised_at_prepare(hospital: dict) -> None:
    from client import task
    from client.count_release import CountNoise

    cfg, runtime, site = cc._setup(_ctx(hospital))
    data = cc._data(cfg, runtime)
    counts, snps, exact, _ = task.prepare(site, data, None, 0, 1)
    z = 0.05
    noisy_counts, _, noisy, notes = task.prepare(
        site, data, None, 0, 1, CountNoise(z, np.random.default_rng(1), 0.5)
    )
    std = z * np.sqrt(len(snps) + 2)
    assert noisy.shape == exact.shape and any("noised" in n for n in notes)
    away = exact > 3 * std
    assert away.sum() > 100
    assert np.std(noisy[away] - exact[away]) == pytest.approx(std, rel=0.15)
    assert set(noisy_counts) == set(counts)
