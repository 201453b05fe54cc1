"""The ServerApp's phases, one function each, over a ``Federation`` (grid, run folder, sites).

Messages are built and read through ``contract.messages``; the ML and data work between
phases lives in ``g2i_models.federated`` and ``preprocessing.federated_qc``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig

from conf import to_object
from contract.messages import (
    EVALUATION_KEYS,
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
)
from contract.wire import from_record, load_wire, to_record, to_wire, unflatten_metrics
from g2i_eval.classifier import pool_sites
from g2i_models.autoencoder import (
    build_autoencoder,
    latent_size,
    scale_factor_from_moments,
    set_scale_factor,
)
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.federated import (
    allele_frequencies,
    genotype_frequencies,
    intersect_panels,
    planned_dp_steps,
    pool_per_dx,
    synthetic_set,
)
from g2i_models.local_training import derive_seed
from g2i_models.panel import panel_config
from g2i_models.pipeline import G2IPipeline, sampler_defaults
from g2i_models.pretrain import (
    check_diffusion_process,
    load_pretrained,
    pretrained_autoencoder,
    seed_from_pretrained,
)
from g2i_models.synthetic import write_synthetic_set
from g2i_models.unet import build_denoiser
from preprocessing.errors import G2IError
from preprocessing.federated_qc import FederatedQCResult, federated_variant_qc
from server.report import failures_by_site, plot_rounds, privacy_ledger, write_ledger
from server.run_state import RunState, restore_strategy_state, strategy_state
from server.strategy import (
    GuardedStrategy,
    RoundLog,
    TooFewSitesError,
    build_strategy,
    site_name,
    site_names,
    sort_replies,
)

log = logging.getLogger("g2i_fed.server")


class QCThresholdMismatch(G2IError):
    """Sites applied different QC thresholds (each site's policy fixes its own)."""


@dataclass
class Federation:
    """What the phases share: the grid, the run folder, the config and the sites."""

    grid: Grid
    cfg: DictConfig
    run: RunState
    names: dict[int, str] = field(default_factory=dict)
    active: list[int] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    def ask(
        self, query: Query, content: RecordDict | None = None, nodes: list[int] | None = None
    ) -> dict[int, RecordDict]:
        """Send ``query`` to ``nodes`` (default: the active sites); the replies by node,
        failures recorded by site name."""
        targets = self.active if nodes is None else nodes
        messages = [
            Message(content or RecordDict(), dst_node_id=n, message_type=query.message_type)
            for n in targets
        ]
        ok, failed = sort_replies(messages, self.grid.send_and_receive(messages, timeout=3600))
        self.fail(str(query).replace("_", " "), failed)
        return {n: reply.content for n, reply in ok.items()}

    def fail(self, stage: str, failures: dict[int, str]) -> None:
        """Record a one-shot step's failures by site in rounds.jsonl (and so metrics.json)."""
        if not failures:
            return
        named = {site_name(self.names, node): reason for node, reason in failures.items()}
        self.run.log_round(RoundLog(stage, None, failures=named, aggregated=False))
        for name, reason in named.items():
            log.warning("site %s failed at %s: %s", name, stage, reason)

    def site_list(self) -> list[str]:
        return [self.names[n] for n in self.active]

    def require(self, stage: str) -> None:
        minimum = int(self.cfg.federation.min_sites)
        if len(self.active) < minimum:
            raise TooFewSitesError(
                f"{stage}: {len(self.active)} sites left, federation.min_sites={minimum}"
            )


@contextmanager
def timed(fed: Federation, phase: str) -> Iterator[None]:
    """Add the wall time of the block to ``fed.timings[phase]`` and print it."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - t0
        fed.timings[phase] = fed.timings.get(phase, 0.0) + seconds
        print(f"[{phase}] done in {seconds:.1f} s", flush=True)


def summary_lines(fed: Federation, metrics: dict[str, Any], total_s: float) -> list[str]:
    """The run's closing lines: time per phase, and where the results are."""
    out = Path(fed.cfg.run_dir).resolve()
    lines = [f"G2I-Fed run finished in {total_s:.0f} s: sites {metrics['sites']}, "
             f"failures {dict(metrics['failures']) or 'none'}"]
    lines += [f"  {phase:<22} {seconds:7.1f} s" for phase, seconds in fed.timings.items()]
    ae = metrics["last_round_site_metrics"].get("ae", {})
    psnr = [m["val-psnr"] for m in ae.values() if "val-psnr" in m]
    if psnr:
        lines.append(f"  autoencoder val PSNR  {np.mean(psnr):.2f} dB (mean over sites)")
    lines += [
        f"  run folder: {out}",
        f"  model: {out / 'model'}",
        f"  synthetic grid: {out / 'synthetic' / 'grid.png'} (real vs synthetic: "
        f"{out / 'real_vs_synthetic.png'})",
        f"  metrics: {out / 'metrics.json'}",
    ]
    return lines


def wait_for_nodes(grid: Grid, min_nodes: int, timeout_s: float = 120.0) -> list[int]:
    """Node IDs once at least ``min_nodes`` SuperNodes are connected."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= min_nodes:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {min_nodes} sites connected in {timeout_s} s")
        time.sleep(1.0)


def run_census(fed: Federation) -> None:
    """Who is there: aggregate counts per site, summed."""
    fed.active = wait_for_nodes(fed.grid, int(fed.cfg.federation.min_sites))
    # The name each SuperNode was registered under; the census names the rest (simulation).
    fed.names = site_names(fed.grid)
    replies = {n: CensusReply.from_record(c) for n, c in fed.ask(Query.CENSUS).items()}
    for node, reply in replies.items():
        fed.names.setdefault(node, reply.site)
    fed.active = sorted(replies)
    fed.require("census")
    totals: Counter[str] = Counter()
    for reply in replies.values():
        totals.update(reply.counts)
    fed.results["census"] = dict(totals)


def run_federated_qc(fed: Federation) -> FederatedQCResult:
    """Phase 0: per-SNP counts from every site, the pooled keep-list plink1.9 would give."""
    replies = {n: QCCountsReply.from_record(c) for n, c in fed.ask(Query.QC_COUNTS).items()}
    by_array: dict[str, list[int]] = {}
    for node, reply in replies.items():
        by_array.setdefault(reply.counts.bim_fingerprint, []).append(node)
    main_array = max(by_array.values(), key=len) if by_array else []
    fed.fail(
        "qc counts",
        {
            n: "genotyped another array (different .bim) than the majority"
            for nodes in by_array.values()
            if nodes is not main_array
            for n in nodes
        },
    )
    fed.active = sorted(main_array)
    fed.require("qc counts")
    thresholds = {json.dumps(replies[n].thresholds, sort_keys=True) for n in fed.active}
    if len(thresholds) > 1:
        raise QCThresholdMismatch(
            f"sites applied different QC thresholds ({sorted(thresholds)}); their policies "
            "must agree for a federated QC"
        )
    qc = to_object(fed.cfg.data.qc)
    for k, v in replies[fed.active[0]].thresholds.items():
        setattr(qc, k.replace("-", "_"), v)
    decision = federated_variant_qc([replies[n].counts for n in fed.active], qc)
    summary = decision.summary()
    suppressed = {fed.names[n]: replies[n].suppressed for n in fed.active if replies[n].suppressed}
    if suppressed:
        # Where a site withheld or merged a small group, the pooled counts differ from
        # pooled plink1.9 in those groups: said so in the summary.
        summary["suppressed_cells"] = suppressed
    fed.results["federated_qc"] = summary
    return decision


def run_prepare(fed: Federation, decision: FederatedQCResult) -> dict[int, PrepareReply]:
    """Sites apply the keep-list and build their datasets; the federation's SNP panel."""
    replies = {
        n: PrepareReply.from_record(c)
        for n, c in fed.ask(Query.PREPARE, QCDecision(decision).to_record()).items()
    }
    fed.active = sorted(n for n, r in replies.items() if r.counts.get("n-train", 0) > 0)
    fed.fail("prepare", {n: "no training subjects" for n in replies if n not in fed.active})
    fed.require("prepare")
    panels = [replies[n].snps for n in fed.active]
    panel = intersect_panels(panels)
    fed.results["panel"] = panel
    fed.results["per_dx"] = pool_per_dx([replies[n].per_dx for n in fed.active], panels, panel)
    fed.run.set(panel=panel, qc=fed.results["federated_qc"], sites=fed.site_list())
    log.info("federated QC: %s; panel of %d SNPs", fed.results["federated_qc"], len(panel))
    return replies


def base_round(fed: Federation, prepared: dict[int, PrepareReply]) -> RoundConfig:
    cfg = fed.cfg
    n_train = [prepared[n].counts["n-train"] for n in fed.active]
    return RoundConfig(
        phase=Phase.AE,
        panel=fed.results["panel"],
        seed=int(cfg.seed),
        total_dp_steps=planned_dp_steps(
            n_train,
            to_object(cfg.federation),
            to_object(cfg.train),
            to_object(cfg.privacy),
            pretrained=bool(cfg.model.pretrained),
        ),
    )


def run_rounds(
    fed: Federation, phase: Phase, initial: dict[str, np.ndarray], config: RoundConfig
) -> dict[str, np.ndarray]:
    """Rounds of one phase through the configured strategy, resuming from a checkpoint with
    the server optimiser's state."""
    run, cfg = fed.run, fed.cfg
    rounds = int(cfg.federation.rounds_ae if phase == Phase.AE else cfg.federation.rounds_ldm)
    done = run.rounds_done(phase)
    arrays = run.load_checkpoint(phase) or initial
    if done >= rounds:
        return arrays
    if phase == Phase.AE and done > 0:
        # A longer autoencoder phase changes the latents: the scale and the LDM trained on
        # the old autoencoder no longer fit it.
        run.invalidate(Phase.LDM, "scale")
    inner = build_strategy(to_object(cfg.federation), to_object(cfg.privacy), len(fed.active))
    restore_strategy_state(inner, run.load_strategy_state(phase), arrays)
    strategy = GuardedStrategy(inner, int(cfg.federation.min_sites), phase, fed.names)
    strategy.round_offset = done
    strategy.num_rounds = rounds - done
    strategy.evaluate_every = int(cfg.federation.evaluate_every)
    started = [time.monotonic()]

    def checkpoint(server_round: int, record: ArrayRecord) -> MetricRecord | None:
        if server_round > 0:
            whole = merge_subset(arrays, from_record(record))
            run.checkpoint(phase, done + server_round, whole, strategy_state(inner))
            if strategy.rounds:
                run.log_round(strategy.rounds[-1])
                seconds = time.monotonic() - started[0]
                print(round_line(strategy.rounds[-1], rounds, len(fed.active), seconds), flush=True)
        started[0] = time.monotonic()
        return None

    # Sites derive their random streams from (run seed, site, phase, round): the offset keeps
    # a resumed run's rounds from replaying the first ones'.
    config.phase, config.round_offset = phase, done
    try:
        result = strategy.start(
            fed.grid,
            to_record(arrays),
            num_rounds=rounds - done,
            train_config=config.to_config(),
            evaluate_config=config.to_config(),
            evaluate_fn=checkpoint,
        )
    except TooFewSitesError:
        run.log_round(strategy.rounds[-1])  # the stopped round, naming the sites that failed
        raise
    return merge_subset(arrays, from_record(result.arrays))


def merge_subset(
    whole: dict[str, np.ndarray], trained: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The global model with the aggregated tensors laid over it: when the sites train a
    subset (``privacy.trainable``), only it travels back and is averaged; the frozen rest
    stays as the phase started."""
    unknown = sorted(set(trained) - set(whole))
    if unknown:
        raise KeyError(f"the sites returned tensors the global model lacks: {unknown[:3]}")
    return {**whole, **trained}


def round_line(entry: RoundLog, rounds: int, n_sites: int, seconds: float) -> str:
    """One progress line: phase, round, sites answered, mean train loss, validation, time."""
    metrics = entry.site_metrics.values()
    losses = [m["loss"] for m in metrics if "loss" in m]
    loss = f"loss {np.mean(losses):.4f}" if losses else "loss -"
    val_key = "val-psnr" if entry.phase == Phase.AE else "val-mse"
    vals = [m[val_key] for m in metrics if val_key in m]
    val = f", {val_key} {np.mean(vals):.4g}" if vals else ""
    return (
        f"[{entry.phase} round {entry.round}/{rounds}] {len(losses)}/{n_sites} sites, "
        f"{loss}{val}, {seconds:.1f} s"
    )


def run_latent_scale(
    fed: Federation,
    ae_arrays: dict[str, np.ndarray],
    config: RoundConfig,
    known: float | None = None,
) -> float:
    """Sites keep the global autoencoder and return latent moments; the scale 1/std(z).
    A ``known`` scale (the public stage's) asks the sites for no moments of their data."""
    config.phase = Phase.AE
    if known is not None and fed.run.get("scale") is None:
        fed.run.set(scale=float(known))
    request = LatentStatsRequest(ae_arrays, config, moments=known is None)
    replies = fed.ask(Query.LATENT_STATS, request.to_record())
    fed.active = sorted(replies)
    fed.require("latent stats")
    scale = fed.run.get("scale")
    if scale is None:
        moments = [LatentMoments.from_record(c) for c in replies.values()]
        scale = scale_factor_from_moments(
            sum(m.count for m in moments), sum(m.sum for m in moments),
            sum(m.sum_sq for m in moments),
        )
        fed.run.set(scale=scale)
    return float(scale)


def run_generation(
    fed: Federation, ae_arrays: dict[str, np.ndarray], ldm_arrays: dict[str, np.ndarray],
    scale: float,
) -> SyntheticSet:
    """The pipeline from the federated weights, saved; the synthetic set, written."""
    cfg = fed.cfg
    data, model_cfg = to_object(cfg.data), to_object(cfg.model)
    panel = fed.results["panel"]
    ae = build_autoencoder(model_cfg, data.image_size)
    load_wire(ae, ae_arrays)
    set_scale_factor(ae, scale)
    denoiser = build_denoiser(model_cfg, len(panel), latent_size(ae), panel)
    load_wire(denoiser, ldm_arrays)
    freqs = genotype_frequencies(fed.results["per_dx"])
    pipeline = G2IPipeline.from_parts(
        ae,
        denoiser,
        build_noise_scheduler(model_cfg),
        **sampler_defaults(model_cfg),
        allele_freqs=allele_frequencies(freqs),
        panel=panel_config(panel),
    )
    out = Path(cfg.run_dir)
    pipeline.save_pretrained(out / "model")
    n = int(cfg.federation.synthetic_per_class)
    images, labels, genotypes = synthetic_set(pipeline, freqs, n, int(cfg.seed))
    write_synthetic_set(
        out / "synthetic",
        images,
        labels,
        genotypes,
        panel,
        [int(cfg.seed)] * len(labels),
        data.slice_z_mm,
        {"profiles": "drawn per SNP from pooled per-diagnosis genotype counts"},
    )
    # The images as arrays too, for the real-vs-synthetic grid (scripts/real_vs_synthetic.py).
    np.savez_compressed(out / "synthetic" / "images.npz", images=images.numpy(),
                        labels=labels.numpy())
    return SyntheticSet(images.numpy(), labels.numpy(), genotypes.numpy(), panel)


def run_synthetic_evaluation(fed: Federation, synthetic: SyntheticSet) -> None:
    """Share the set; each site scores it on its own data (aggregates only)."""
    receipts = {
        n: SyntheticReceipt.from_record(c)
        for n, c in fed.ask(Query.SYNTHETIC, synthetic.to_record()).items()
    }
    digest = synthetic.digest()
    fed.fail("synthetic set", {n: "receipt digest differs" for n, r in receipts.items()
                               if r.digest != digest})
    shared = sorted(n for n, r in receipts.items() if r.digest == digest)
    fed.results["shared_with"] = [fed.names[n] for n in shared]
    evaluation = to_object(fed.cfg.evaluation)
    settings = {k: getattr(evaluation, k) for k in EVALUATION_KEYS}
    settings["classifier_seeds"] = [int(s) for s in evaluation.classifier_seeds]
    request = EvaluateSyntheticRequest(digest, settings)
    replies = fed.ask(Query.EVALUATE_SYNTHETIC, request.to_record(), shared)
    evaluations = {fed.names[n]: SiteEvaluation.from_record(c) for n, c in replies.items()}
    fed.results["downstream"], fed.results["memorisation"] = site_evaluations(evaluations)


def site_evaluations(
    replies: dict[str, SiteEvaluation],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json's ``downstream`` (per site, and the across-site mean / SD of the sites'
    seed means) and ``memorisation`` (each site's aggregate audit)."""
    down = {s: unflatten_metrics(r.downstream) for s, r in sorted(replies.items())}
    audit = {s: unflatten_metrics(r.memorisation) for s, r in sorted(replies.items())}
    return (
        {"sites": down, "across_sites": pool_sites(down) if down else {}},
        {"sites": audit},
    )


def write_report(fed: Federation, scale: float) -> dict[str, Any]:
    """metrics.json, the privacy ledger and the round plot."""
    cfg, run = fed.cfg, fed.run
    out = Path(cfg.run_dir)
    privacy = to_object(cfg.privacy)
    rounds = run.round_logs()
    n_sampled = max(
        int(cfg.federation.min_sites), int(round(cfg.federation.fraction_train * len(fed.active)))
    )
    write_ledger(privacy_ledger(rounds, privacy, n_sampled, len(fed.active)), out)
    plot_rounds(rounds, out / "rounds.png")
    last = {p: next((r for r in reversed(rounds) if r["phase"] == p), None) for p in ("ae", "ldm")}
    metrics = {
        "experiment": cfg.name,
        "sites": fed.site_list(),
        "census": fed.results["census"],
        "federated_qc": fed.results["federated_qc"],
        "panel_size": len(fed.results["panel"]),
        "latent_scale_factor": scale,
        "rounds": {"ae": run.rounds_done("ae"), "ldm": run.rounds_done("ldm")},
        "last_round_site_metrics": {p: r["site_metrics"] if r else {} for p, r in last.items()},
        "synthetic": {
            "per_class": int(cfg.federation.synthetic_per_class),
            "shared_with": fed.results["shared_with"],
        },
        "downstream": fed.results["downstream"],
        "memorisation": fed.results["memorisation"],
        "failures": failures_by_site(rounds),
        "privacy": {"mode": str(privacy.mode), "delta": privacy.delta},
        "pretrained": fed.results.get("pretrained"),
        "timings_s": {k: round(v, 1) for k, v in fed.timings.items()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run.set(finished=True)
    return metrics


def initial_weights(fed: Federation, phase: Phase) -> dict[str, np.ndarray]:
    """Starting global weights of a phase's network: fresh, or for the LDM after a public
    stage (``model.pretrained``) the public denoiser fitted to the federation's panel."""
    data, model_cfg = to_object(fed.cfg.data), to_object(fed.cfg.model)
    # The initialisation is the run's too: a stream of its own from (run seed, phase), so a
    # rerun with the same seed starts from the same weights.
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(int(fed.cfg.seed), "server", f"init-{phase}", 0))
        ae = build_autoencoder(model_cfg, data.image_size)
        if phase == Phase.AE:
            return to_wire(ae.state_dict())
        panel = fed.results["panel"]
        denoiser = build_denoiser(model_cfg, len(panel), latent_size(ae), panel)
    if model_cfg.pretrained:
        public = load_pretrained(model_cfg.pretrained)
        check_diffusion_process(public, model_cfg)
        fresh = seed_from_pretrained(public, denoiser, panel)
        fed.results["pretrained"]["fresh_tensors"] = fresh
        log.info("LDM starts from %s (%d tensors fresh)", model_cfg.pretrained, len(fresh))
    return to_wire(denoiser.state_dict())


def public_autoencoder(fed: Federation) -> tuple[dict[str, np.ndarray], float]:
    """The public stage's autoencoder (``model.pretrained``) and its latent scale: the
    federation's phase 1, trained without the sites' data."""
    data, model_cfg = to_object(fed.cfg.data), to_object(fed.cfg.model)
    ae = pretrained_autoencoder(load_pretrained(model_cfg.pretrained), model_cfg, data.image_size)
    scale = float(ae.config.scaling_factor)
    fed.results["pretrained"] = {"dir": str(model_cfg.pretrained), "latent_scale_factor": scale}
    return to_wire(ae.state_dict()), scale
