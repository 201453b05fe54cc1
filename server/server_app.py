"""ServerApp: census, federated QC, autoencoder rounds, LDM rounds, generation, report.

Phase 0: sites send per-SNP genotype counts; the server derives the keep-list plink1.9 would
give on the pooled cohort and sends it back; sites build their datasets. Phase 1: autoencoder
rounds. Between phases the sites return latent moments and the server sets the scale factor.
Phase 2: SNP encoder + UNet rounds with the autoencoder frozen at the sites (only the trained
parts travel). Then the server generates the synthetic set from the federated per-diagnosis
genotype frequencies and shares it; each site scores it (downstream classifier real vs real +
synthetic, memorisation audit against its training images) and returns summaries only.
Every round is checkpointed; rerunning a run folder resumes it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from client.records import from_record, to_record
from client.task import (
    decision_to_arrays,
    evaluation_to_config,
    load_wire,
    to_wire,
    unflatten_metrics,
)
from conf import load_config, to_object
from g2i_eval.classifier import pool_sites
from g2i_models.autoencoder import (
    build_autoencoder,
    latent_size,
    scale_factor_from_moments,
    set_scale_factor,
)
from g2i_models.device import seed_everything
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.pipeline import G2IPipeline, generate
from g2i_models.privacy import planned_steps
from g2i_models.synthetic import genotype_frequencies, sample_profiles, write_synthetic_set
from g2i_models.unet import build_denoiser
from preprocessing.federated_qc import SiteCounts, federated_variant_qc
from server.report import failures_by_site, plot_rounds, privacy_ledger, write_ledger
from server.run_state import RunState
from server.strategy import (
    GuardedStrategy,
    RoundLog,
    TooFewSitesError,
    build_strategy,
    site_name,
    site_names,
    sort_replies,
)

app = ServerApp()
log = logging.getLogger("g2i_fed.server")


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


def broadcast(
    grid: Grid,
    nodes: list[int],
    action: str,
    content: RecordDict | None = None,
    timeout: float = 3600,
) -> tuple[dict[int, RecordDict], dict[int, str]]:
    """Send ``query.<action>`` to every node; (replies by node, failures by node)."""
    messages = [
        Message(content or RecordDict(), dst_node_id=n, message_type=f"query.{action}")
        for n in nodes
    ]
    ok, failed = sort_replies(messages, grid.send_and_receive(messages, timeout=timeout))
    return {n: reply.content for n, reply in ok.items()}, failed


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(
        str(context.run_config.get("experiment", "tiny")),
        str(context.run_config.get("overrides", "")),
    )
    data, model_cfg, train_cfg = to_object(cfg.data), to_object(cfg.model), to_object(cfg.train)
    fed, privacy = to_object(cfg.federation), to_object(cfg.privacy)
    run = RunState(cfg.run_dir)
    seed_everything(cfg.seed)

    def fail(stage: str, failures: dict[int, str]) -> None:
        """Record a one-shot step's failures by site in rounds.jsonl (and so metrics.json)."""
        if not failures:
            return
        named = {site_name(names, node): reason for node, reason in failures.items()}
        run.log_round(RoundLog(stage, None, failures=named, aggregated=False))
        for name, reason in named.items():
            log.warning("site %s failed at %s: %s", name, stage, reason)

    # -- census: who is there ---------------------------------------------------------------
    nodes = wait_for_nodes(grid, fed.min_sites)
    # The name each SuperNode was registered under; the census names the rest (simulation).
    names: dict[int, str] = site_names(grid)
    census, failed = broadcast(grid, nodes, "census")
    for node, content in census.items():
        names.setdefault(
            node, str(content["site"]["name"]) if "site" in content.config_records else str(node)
        )
    fail("census", failed)
    active = sorted(census)
    _require(active, fed.min_sites, "census")
    census_totals = Counter()
    for content in census.values():
        census_totals.update({k: int(v) for k, v in content["census"].items()})

    # -- phase 0: federated QC, then local datasets -----------------------------------------
    counts, failed = broadcast(grid, active, "qc_counts")
    fail("qc counts", failed)
    by_array: dict[str, list[int]] = {}
    site_counts: dict[int, SiteCounts] = {}
    for node, content in counts.items():
        site_counts[node] = SiteCounts.from_arrays(from_record(content["counts"]))
        by_array.setdefault(site_counts[node].bim_fingerprint, []).append(node)
    main_array = max(by_array.values(), key=len)
    fail(
        "qc counts",
        {
            n: "genotyped another array (different .bim) than the majority"
            for nodes_ in by_array.values()
            if nodes_ is not main_array
            for n in nodes_
        },
    )
    decision = federated_variant_qc([site_counts[n] for n in main_array], data.qc)

    prepared, failed = broadcast(
        grid,
        sorted(main_array),
        "prepare",
        RecordDict({"decision": to_record(decision_to_arrays(decision))}),
    )
    fail("prepare", failed)
    active = sorted(n for n, c in prepared.items() if int(c["counts"]["n-train"]) > 0)
    fail("prepare", {n: "no training subjects" for n in prepared if n not in active})
    _require(active, fed.min_sites, "prepare")
    panels = {n: [str(s) for s in prepared[n]["panel"]["snps"]] for n in active}
    panel = [s for s in panels[active[0]] if all(s in p for p in panels.values())]
    per_dx = np.zeros((3, len(panel), 4), dtype=np.int64)
    for n in active:
        site_dx = prepared[n]["panel-counts"]["per-dx"].numpy()
        idx = [panels[n].index(s) for s in panel]
        per_dx += site_dx[:, idx, :]
    run.set(panel=panel, qc=decision.summary(), sites=[names[n] for n in active])
    log.info(
        "federated QC: %s; panel of %d SNPs over %d sites",
        decision.summary(),
        len(panel),
        len(active),
    )

    # -- phase 1: autoencoder -------------------------------------------------------------
    base = {
        "panel": panel,
        "seed": cfg.seed,
        "total-dp-steps": _total_dp_steps(prepared, active, fed, train_cfg),
    }
    ae = build_autoencoder(model_cfg, data.image_size)
    ae_arrays = _run_phase(
        grid,
        run,
        "ae",
        to_wire(ae.state_dict()),
        fed.rounds_ae,
        base,
        fed,
        privacy,
        names,
        len(active),
    )
    load_wire(ae, ae_arrays)

    # -- scale factor from the sites' latent moments ----------------------------------------
    scale = run.get("scale")
    moments, failed = broadcast(
        grid,
        active,
        "latent_stats",
        RecordDict(
            {"arrays": to_record(ae_arrays), "config": ConfigRecord({**base, "phase": "ae"})}
        ),
    )
    fail("latent stats", failed)
    if scale is None:
        tot = [
            sum(float(m["moments"][k]) for m in moments.values())
            for k in ("count", "sum", "sum-sq")
        ]
        scale = scale_factor_from_moments(*tot)
        run.set(scale=scale)
    set_scale_factor(ae, scale)
    active = sorted(moments)
    _require(active, fed.min_sites, "latent stats")

    # -- phase 2: SNP encoder + UNet, autoencoder frozen at the sites ------------------------
    denoiser = build_denoiser(model_cfg, len(panel), latent_size(ae))
    ldm_arrays = _run_phase(
        grid,
        run,
        "ldm",
        to_wire(denoiser.state_dict()),
        fed.rounds_ldm,
        {**base, "scale": scale},
        fed,
        privacy,
        names,
        len(active),
    )
    load_wire(denoiser, ldm_arrays)

    # -- generation -------------------------------------------------------------------------
    freqs = genotype_frequencies(per_dx)
    allele = (freqs[..., 1] + 2 * freqs[..., 2]).mean(axis=0) / 2
    pipeline = G2IPipeline.from_parts(
        ae,
        denoiser,
        build_noise_scheduler(model_cfg),
        sampler=model_cfg.sampler,
        sample_steps=model_cfg.sample_steps,
        guidance_scale=model_cfg.guidance_scale,
        allele_freqs=[float(a) for a in allele],
    )
    out = Path(cfg.run_dir)
    pipeline.save_pretrained(out / "model")
    rng = np.random.default_rng(cfg.seed)
    n = fed.synthetic_per_class
    genotypes = torch.from_numpy(
        np.concatenate([sample_profiles(freqs, k, n, rng) for k in range(3)])
    )
    labels = torch.arange(3).repeat_interleave(n)
    images = generate(pipeline, genotypes, labels, seed=cfg.seed)
    write_synthetic_set(
        out / "synthetic",
        images,
        labels,
        genotypes,
        panel,
        [cfg.seed] * len(labels),
        data.slice_z_mm,
        {"profiles": "drawn per SNP from pooled per-diagnosis genotype counts"},
    )
    shared, failed = broadcast(
        grid,
        active,
        "synthetic",
        RecordDict(
            {
                "arrays": to_record(
                    {
                        "images": images.numpy(),
                        "labels": labels.numpy(),
                        "genotypes": genotypes.numpy(),
                    }
                ),
                "config": ConfigRecord({"panel": panel}),
            }
        ),
    )
    fail("synthetic set", failed)

    # -- each site scores the synthetic set on its own data ---------------------------------
    evaluated, failed = broadcast(
        grid,
        sorted(shared),
        "evaluate_synthetic",
        RecordDict({"config": ConfigRecord(evaluation_to_config(to_object(cfg.evaluation)))}),
    )
    fail("synthetic evaluation", failed)
    downstream, memorisation = _site_evaluations({names[k]: c for k, c in evaluated.items()})

    # -- report -------------------------------------------------------------------------------
    rounds = run.round_logs()
    n_sampled = max(fed.min_sites, int(round(fed.fraction_train * len(active))))
    write_ledger(privacy_ledger(rounds, to_object(cfg.privacy), n_sampled, len(active)), out)
    plot_rounds(rounds, out / "rounds.png")
    last = {p: next((r for r in reversed(rounds) if r["phase"] == p), None) for p in ("ae", "ldm")}
    metrics = {
        "experiment": cfg.name,
        "sites": [names[n] for n in active],
        "census": dict(census_totals),
        "federated_qc": decision.summary(),
        "panel_size": len(panel),
        "latent_scale_factor": scale,
        "rounds": {"ae": run.rounds_done("ae"), "ldm": run.rounds_done("ldm")},
        "last_round_site_metrics": {p: r["site_metrics"] if r else {} for p, r in last.items()},
        "synthetic": {"per_class": n, "shared_with": [names[k] for k in shared]},
        "downstream": downstream,
        "memorisation": memorisation,
        "failures": failures_by_site(rounds),
        "privacy": {"mode": privacy.mode, "delta": privacy.delta},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run.set(finished=True)
    print(
        f"G2I-Fed run finished: {out} (sites {metrics['sites']}, "
        f"failures {list(metrics['failures'])})"
    )


def _site_evaluations(
    replies: dict[str, RecordDict],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json's ``downstream`` (per site, and the across-site mean / SD of the sites'
    seed means) and ``memorisation`` (per site, and the flagged synthetic indices by site)."""
    down = {s: unflatten_metrics(dict(r["downstream"])) for s, r in sorted(replies.items())}
    audit = {s: unflatten_metrics(dict(r["memorisation"])) for s, r in sorted(replies.items())}
    flagged = {
        s: {
            space: [f["synthetic_index"] for f in a[space]["flagged"]]
            for space in ("pixel", "features")
            if space in a
        }
        for s, a in audit.items()
    }
    return (
        {"sites": down, "across_sites": pool_sites(down) if down else {}},
        {"sites": audit, "flagged_by_site": flagged},
    )


def _require(nodes: list[int], minimum: int, stage: str) -> None:
    if len(nodes) < minimum:
        raise TooFewSitesError(f"{stage}: {len(nodes)} sites left, federation.min_sites={minimum}")


def _total_dp_steps(
    prepared: dict[int, RecordDict], active: list[int], fed: Any, train_cfg: Any
) -> int:
    """Largest number of local DP-SGD steps any site takes over both phases."""
    n_train = max(int(prepared[n]["counts"]["n-train"]) for n in active)
    per_epoch = max(1, n_train // max(1, min(train_cfg.batch_size, n_train)))
    ae = fed.rounds_ae * planned_steps(per_epoch, train_cfg.ae_epochs, train_cfg.max_steps_ae)
    ldm = fed.rounds_ldm * planned_steps(per_epoch, train_cfg.ldm_epochs, train_cfg.max_steps_ldm)
    return ae + ldm


def _run_phase(
    grid: Grid,
    run: RunState,
    phase: str,
    initial: dict[str, np.ndarray],
    rounds: int,
    config: dict[str, Any],
    fed: Any,
    privacy: Any,
    names: dict[int, str],
    n_sites: int,
) -> dict[str, np.ndarray]:
    """Rounds of one phase through the configured strategy, resuming from a checkpoint."""
    done = run.rounds_done(phase)
    arrays = run.load_checkpoint(phase) or initial
    if done >= rounds:
        return arrays
    strategy = GuardedStrategy(build_strategy(fed, privacy, n_sites), fed.min_sites, phase, names)
    strategy.round_offset = done

    def checkpoint(server_round: int, record: ArrayRecord) -> MetricRecord | None:
        if server_round > 0:
            run.checkpoint(phase, done + server_round, from_record(record))
            if strategy.rounds:
                run.log_round(strategy.rounds[-1])
        return None

    # Sites derive their random streams from (run seed, site, phase, round): the offset keeps
    # a resumed run's rounds from replaying the first ones'.
    phase_config = ConfigRecord({**config, "phase": phase, "round-offset": done})
    try:
        result = strategy.start(
            grid,
            to_record(arrays),
            num_rounds=rounds - done,
            train_config=phase_config,
            evaluate_config=phase_config,
            evaluate_fn=checkpoint,
        )
    except TooFewSitesError:
        run.log_round(strategy.rounds[-1])  # the stopped round, naming the sites that failed
        raise
    return from_record(result.arrays)
