"""ClientApp: one per site. Turns the server's messages into calls of ``client.task``.

Every request is first checked against the site's policy (``client.policy``): the server may
set only allow-listed training hyper-parameters, within the policy; DP mode, noise floor,
budget, QC thresholds, splits, cell size, audit and paths are the site's. Only weights,
aggregate counts and metrics go back, and an error reply carries a sanitised summary
(``client.errors``). Messages are read and built through ``contract.messages``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace

from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from omegaconf import DictConfig

from client import task
from client.audit import audit_mod
from client.count_release import CENSUS_SENSITIVITY, CountNoise, charge
from client.errors import sanitising_mod
from client.policy import ReleaseRefused, SiteRuntime, compose, site_privacy
from client.site import set_site_threads
from conf import to_object
from conf.schema import DataConfig
from contract.messages import (
    ARRAYS,
    CONFIG,
    CensusReply,
    EvaluateSyntheticRequest,
    LatentMoments,
    LatentStatsRequest,
    Phase,
    PrepareReply,
    QCCountsReply,
    QCDecision,
    Query,
    RoundConfig,
    SiteEvaluation,
    SyntheticReceipt,
    SyntheticSet,
    metrics_reply,
    train_reply,
)
from contract.wire import all_finite, from_record
from preprocessing.census import site_census

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


class NonFiniteUpdate(FloatingPointError):
    """Local training produced a non-finite loss or weights; the update is withheld."""


def _setup(context: Context) -> tuple[DictConfig, SiteRuntime, task.Site]:
    set_site_threads(context.node_config)
    cfg, runtime = compose(dict(context.run_config), dict(context.node_config), context.run_id)
    site = task.resolve_site(
        runtime.data_dir,
        runtime.work_root,
        f"{cfg.name}|{cfg.run_dir}",
        lifetime_ledger=not runtime.simulation,
    )
    return cfg, runtime, site


def _data(cfg: DictConfig, runtime: SiteRuntime) -> DataConfig:
    """The data settings with the site's own QC thresholds and splits."""
    p = runtime.policy
    return replace(
        to_object(cfg.data),
        qc=p.qc,
        val_fraction=p.val_fraction,
        test_fraction=p.test_fraction,
        cache_dir=runtime.work_root,
    )


def _spec(config: RoundConfig) -> task.RoundSpec:
    return task.RoundSpec(
        phase=config.phase,
        panel=config.panel,
        proximal_mu=config.proximal_mu,
        seed=config.seed,
        total_dp_steps=config.total_dp_steps,
        round=config.round,
    )


def _once(runtime: SiteRuntime, kind: str) -> None:
    runtime.releases.check(runtime.run_id, kind)


def _charge(site: task.Site, runtime: SiteRuntime, kind: str) -> CountNoise | None:
    """The noise of a count release under the site's policy, charged to its ledger."""
    return charge(site.ledger, runtime.policy, str(kind))


def census(msg: Message, context: Context) -> Message:
    """Aggregate counts: subjects per diagnosis, scans, genotyped samples."""
    cfg, runtime, site = _setup(context)
    counts = site_census(runtime.data_dir, _data(cfg, runtime))
    if runtime.policy.count_noise_multiplier > 0:  # a noisy census costs budget: once a run
        _once(runtime, Query.CENSUS)
    noise = _charge(site, runtime, Query.CENSUS)
    if noise is not None:
        counts = noise.census(counts)
    counts, small = task.suppress_counts(counts, runtime.policy.min_cell_size)
    if noise is not None:
        small.append(noise.note(CENSUS_SENSITIVITY))
        runtime.releases.record(runtime.run_id, Query.CENSUS)
    reply = CensusReply(runtime.data_dir.name, counts, small)
    return Message(reply.to_record(), reply_to=msg)


def qc_counts(msg: Message, context: Context) -> Message:
    """Phase 0: per-SNP genotype counts after the site's --mind, once per run."""
    cfg, runtime, site = _setup(context)
    _once(runtime, Query.QC_COUNTS)
    qc = runtime.policy.qc
    noise = _charge(site, runtime, Query.QC_COUNTS)
    counts, notes = task.qc_counts(site, qc, runtime.policy.min_cell_size, noise)
    reply = QCCountsReply(counts, asdict(qc), notes)
    runtime.releases.record(runtime.run_id, Query.QC_COUNTS)
    return Message(reply.to_record(), reply_to=msg)


def prepare(msg: Message, context: Context) -> Message:
    """Apply the federation's keep-list; build the panel and the slice cache, once per run."""
    cfg, runtime, site = _setup(context)
    _once(runtime, Query.PREPARE)
    decision = QCDecision.from_record(msg.content).decision
    counts, snps, per_dx, notes = task.prepare(
        site,
        _data(cfg, runtime),
        decision,
        runtime.policy.split_seed,
        runtime.policy.min_cell_size,
        _charge(site, runtime, Query.PREPARE),
    )
    runtime.releases.record(runtime.run_id, Query.PREPARE)
    return Message(PrepareReply(counts, snps, per_dx, notes).to_record(), reply_to=msg)


def latent_stats(msg: Message, context: Context) -> Message:
    """After phase 1: keep the global autoencoder, return latent moments for the scale."""
    cfg, runtime, site = _setup(context)
    request = LatentStatsRequest.from_record(msg.content)
    stats = task.latent_stats(
        site,
        request.ae,
        _spec(request.config),
        _data(cfg, runtime),
        to_object(cfg.model),
        to_object(cfg.train),
        request.moments,
    )
    moments = LatentMoments(stats["count"], stats["sum"], stats["sum-sq"], stats["num-examples"])
    return Message(moments.to_record(), reply_to=msg)


def receive_synthetic(msg: Message, context: Context) -> Message:
    """Store the shared synthetic set (one per run) and record its digest."""
    _, runtime, site = _setup(context)
    _once(runtime, Query.SYNTHETIC)
    synthetic = SyntheticSet.from_record(msg.content)
    digest = task.store_synthetic(site, synthetic)
    runtime.releases.record(runtime.run_id, Query.SYNTHETIC, digest)
    return Message(SyntheticReceipt(len(synthetic.labels), digest).to_record(), reply_to=msg)


def evaluate_synthetic(msg: Message, context: Context) -> Message:
    """Downstream classifier (real vs real + synthetic) and the memorisation audit of the
    synthetic set this site received in this run: aggregates only, once per run, at most
    ``policy.audit_max_runs`` times over the site's life."""
    cfg, runtime, site = _setup(context)
    policy = runtime.policy
    _once(runtime, Query.EVALUATE_SYNTHETIC)
    request = EvaluateSyntheticRequest.from_record(msg.content)
    if request.digest != runtime.releases.get(runtime.run_id, Query.SYNTHETIC):
        raise task.SyntheticSetMismatch(
            "evaluate_synthetic names a synthetic set this site did not receive in this run"
        )
    audit = policy.audit
    if audit and runtime.releases.lifetime("audit") >= policy.audit_max_runs:
        raise ReleaseRefused(
            f"memorisation audit: this site has run it {policy.audit_max_runs} times, the "
            "most its policy allows"
        )
    evaluation = replace(
        task.evaluation_from_settings(request.settings), audit_quantile=policy.audit_quantile
    )
    report = task.evaluate_synthetic(
        site,
        evaluation,
        _data(cfg, runtime),
        to_object(cfg.model),
        str(cfg.train.device),
        request.digest,
        audit=audit,
    )
    runtime.releases.record(runtime.run_id, Query.EVALUATE_SYNTHETIC)
    if audit:
        runtime.releases.record(runtime.run_id, "audit")
    reply = SiteEvaluation(report["downstream"], report["memorisation"])
    return Message(reply.to_record(), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Phase 1 or 2 local training, by the ``phase`` in the round's config."""
    cfg, runtime, site = _setup(context)
    config = RoundConfig.from_config(msg.content[CONFIG])
    spec = _spec(config)
    weights = from_record(msg.content[ARRAYS])
    privacy = site_privacy(to_object(cfg.privacy), runtime)
    if privacy.mode == "dp_sgd" and spec.proximal_mu > 0:
        raise ReleaseRefused(
            "FedProx with DP-SGD: the proximal term would sit outside the clipped per-sample "
            "gradient; this site refuses it (use FedAvg)"
        )
    parts = (_data(cfg, runtime), to_object(cfg.model), to_object(cfg.train), privacy)
    if spec.phase == Phase.AE:
        arrays, metrics = task.train_autoencoder_round(site, weights, spec, *parts)
    elif spec.phase == Phase.LDM:
        arrays, metrics = task.train_ldm_round(site, weights, spec, config.scale, *parts)
    else:
        raise ValueError(f"unknown training phase {spec.phase!r}")
    if not all_finite(arrays) or not math.isfinite(metrics.get("loss", 0.0)):
        raise NonFiniteUpdate(
            f"site {site.data_dir.name}: non-finite loss or weights in phase {spec.phase}; "
            "the update is withheld"
        )
    metrics["num-examples"] = metrics.pop("num_examples")
    return Message(train_reply(arrays, metrics), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """The global model on the site's validation split: metrics only."""
    cfg, runtime, site = _setup(context)
    config = RoundConfig.from_config(msg.content[CONFIG])
    metrics = task.evaluate_round(
        site,
        from_record(msg.content[ARRAYS]),
        _spec(config),
        config.scale,
        _data(cfg, runtime),
        to_object(cfg.model),
        to_object(cfg.train),
    )
    metrics["num-examples"] = metrics.pop("num_examples")
    return Message(metrics_reply(metrics), reply_to=msg)


def optional_clipping_mod(msg: Message, ctxt: Context, call_next) -> Message:  # noqa: ANN001
    """Flower's ``fixedclipping_mod`` when the server runs central DP (its wrapper puts a
    clipping norm in the round config); otherwise a pass-through."""
    if msg.metadata.message_type == MessageType.TRAIN:
        config = msg.content.config_records.get(CONFIG, {})
        if "clipping_norm" in config:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def build_client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """The ClientApp, with extra mods (the privacy test adds one that records replies).
    ``audit_mod`` logs what leaves the site, after ``sanitising_mod`` has made errors safe."""
    app = ClientApp(mods=[audit_mod, sanitising_mod, *mods])
    handlers = {
        Query.CENSUS: census,
        Query.QC_COUNTS: qc_counts,
        Query.PREPARE: prepare,
        Query.LATENT_STATS: latent_stats,
        Query.SYNTHETIC: receive_synthetic,
        Query.EVALUATE_SYNTHETIC: evaluate_synthetic,
    }
    for query, handler in handlers.items():
        app.query(query.value)(handler)
    app.train(mods=[optional_clipping_mod])(train)
    app.evaluate()(evaluate)
    return app


app = build_client_app()
