"""ClientApp: one per site. Turns the server's messages into calls of ``client.task``.

Only weights, aggregate counts and metrics go back: never an image, a genotype or a
subject ID (tested by capturing every reply).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from client import task
from client.audit import audit_mod
from client.records import message_arrays, to_record
from client.site import site_data_path
from conf import load_config, to_object
from preprocessing.census import site_census

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


def _config(context: Context):  # noqa: ANN202 - a composed DictConfig
    rc = context.run_config
    return load_config(str(rc.get("experiment", "tiny")), str(rc.get("overrides", "")))


def _site(context: Context, cfg) -> task.Site:  # noqa: ANN001
    data_dir = site_data_path(context.node_config, cfg.data.root)
    work = str(context.node_config.get("work-path", cfg.data.cache_dir))
    return task.resolve_site(data_dir, work, f"{cfg.name}|{cfg.run_dir}")


def _spec(config: ConfigRecord) -> task.RoundSpec:
    return task.RoundSpec(
        phase=str(config["phase"]),
        panel=[str(s) for s in config["panel"]],
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        seed=int(config.get("seed", 0)),
        total_dp_steps=int(config.get("total-dp-steps", 0)),
        round=int(config.get("server-round", 0)) + int(config.get("round-offset", 0)),
    )


def census(msg: Message, context: Context) -> Message:
    """Aggregate counts: subjects per diagnosis, scans, genotyped samples."""
    cfg = _config(context)
    site_dir = site_data_path(context.node_config, cfg.data.root)
    counts = site_census(site_dir, to_object(cfg.data))
    content = RecordDict(
        {"census": MetricRecord(counts), "site": ConfigRecord({"name": site_dir.name})}
    )
    return Message(content, reply_to=msg)


def qc_counts(msg: Message, context: Context) -> Message:
    """Phase 0: per-SNP genotype counts after local --mind."""
    cfg = _config(context)
    arrays = task.qc_counts(_site(context, cfg), to_object(cfg.data.qc))
    return Message(RecordDict({"counts": to_record(arrays)}), reply_to=msg)


def prepare(msg: Message, context: Context) -> Message:
    """Apply the federation's keep-list; build the panel and the slice cache."""
    cfg = _config(context)
    decision = task.decision_from_arrays(message_arrays(msg))
    counts, snps, per_dx = task.prepare(
        _site(context, cfg), to_object(cfg.data), decision, cfg.seed
    )
    content = RecordDict(
        {
            "counts": MetricRecord(counts),
            "panel": ConfigRecord({"snps": snps}),
            "panel-counts": to_record({"per-dx": per_dx}),
        }
    )
    return Message(content, reply_to=msg)


def latent_stats(msg: Message, context: Context) -> Message:
    """After phase 1: keep the global autoencoder, return latent moments for the scale."""
    cfg = _config(context)
    spec = _spec(msg.content["config"])
    stats = task.latent_stats(
        _site(context, cfg),
        message_arrays(msg),
        spec,
        to_object(cfg.data),
        to_object(cfg.model),
        to_object(cfg.train),
    )
    return Message(RecordDict({"moments": MetricRecord(stats)}), reply_to=msg)


def receive_synthetic(msg: Message, context: Context) -> Message:
    """Store the shared synthetic set for local augmentation."""
    cfg = _config(context)
    a = message_arrays(msg)
    panel = [str(s) for s in msg.content["config"]["panel"]]
    task.store_synthetic(_site(context, cfg), a["images"], a["labels"], a["genotypes"], panel)
    return Message(
        RecordDict({"stored": MetricRecord({"n-images": int(len(a["labels"]))})}), reply_to=msg
    )


def evaluate_synthetic(msg: Message, context: Context) -> Message:
    """Downstream classifier (real vs real + synthetic) and memorisation audit of the shared
    synthetic set at this site: summary statistics and synthetic-set indices only."""
    cfg = _config(context)
    report = task.evaluate_synthetic(
        _site(context, cfg),
        task.evaluation_from_config(msg.content["config"]),
        to_object(cfg.data),
        to_object(cfg.model),
        str(cfg.train.device),
    )
    return Message(RecordDict({k: MetricRecord(v) for k, v in report.items()}), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Phase 1 or 2 local training, by the ``phase`` in the round's config."""
    cfg = _config(context)
    config = msg.content["config"]
    spec = _spec(config)
    site = _site(context, cfg)
    parts = (
        to_object(cfg.data),
        to_object(cfg.model),
        to_object(cfg.train),
        to_object(cfg.privacy),
    )
    if spec.phase == "ae":
        arrays, metrics = task.train_autoencoder_round(site, message_arrays(msg), spec, *parts)
    elif spec.phase == "ldm":
        arrays, metrics = task.train_ldm_round(
            site, message_arrays(msg), spec, float(config["scale"]), *parts
        )
    else:
        raise ValueError(f"unknown training phase {spec.phase!r}")
    if not task.all_finite(arrays) or not np.isfinite(metrics.get("loss", 0.0)):
        raise FloatingPointError(
            f"site {site.data_dir.name}: non-finite loss or weights in phase {spec.phase}; "
            "the update is withheld"
        )
    metrics["num-examples"] = metrics.pop("num_examples")
    return Message(
        RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg
    )


def evaluate(msg: Message, context: Context) -> Message:
    """The global model on the site's validation split: metrics only."""
    cfg = _config(context)
    config = msg.content["config"]
    spec = _spec(config)
    metrics = task.evaluate_round(
        _site(context, cfg),
        message_arrays(msg),
        spec,
        float(config.get("scale", 1.0)),
        to_object(cfg.data),
        to_object(cfg.model),
        to_object(cfg.train),
    )
    metrics["num-examples"] = metrics.pop("num_examples")
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def optional_clipping_mod(msg: Message, ctxt: Context, call_next) -> Message:  # noqa: ANN001
    """Flower's ``fixedclipping_mod`` when the server runs central DP (its wrapper puts a
    clipping norm in the round config); otherwise a pass-through."""
    if msg.metadata.message_type == MessageType.TRAIN:
        config = next(iter(msg.content.config_records.values()), {})
        if "clipping_norm" in config:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def build_client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """The ClientApp, with extra mods (the privacy test adds one that records replies)."""
    app = ClientApp(mods=[audit_mod, *mods])
    app.query("census")(census)
    app.query("qc_counts")(qc_counts)
    app.query("prepare")(prepare)
    app.query("latent_stats")(latent_stats)
    app.query("synthetic")(receive_synthetic)
    app.query("evaluate_synthetic")(evaluate_synthetic)
    app.train(mods=[optional_clipping_mod])(train)
    app.evaluate()(evaluate)
    return app


app = build_client_app()
