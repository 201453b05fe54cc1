"""Bytes each site sends and receives per federated round and for the one-off messages.

Builds the messages the ServerApp and the ClientApp build (the configured Flower strategy's
``configure_train`` / ``configure_evaluate``, replies through ``client.records.to_record``),
with real weights of freshly built models, real federated-QC arrays of one cohort site and a
synthetic set of the run's size, and measures them with Flower's own serialisation:

- ``wire``: the bytes of every object Flower 1.41 pushes for a message (``Message`` ->
  ``RecordDict`` -> records -> ``Array`` -> ``ArrayChunk`` of at most 5 MiB), each deflated
  as the SuperLink stores it, identical objects counted once;
- ``proto``: ``flwr.common.serde.message_to_proto(message).ByteSize()``, the message as one
  protobuf.

gRPC/HTTP framing is not counted. No training: weights are the initial ones (their size
does not depend on their values). Writes ``benchmarks/results/bytes_per_round.json``.

    python benchmarks/bytes_per_round.py                       # tiny and paper
    python benchmarks/bytes_per_round.py --experiments tiny --qc-snps 0
    python benchmarks/bytes_per_round.py --experiments tiny --qc-only --cohort /tmp/cohort

The QC counts at array scale come from a generated site of ``--qc-samples`` samples x
``--qc-snps`` SNPs (``site_counts`` on it, a few seconds to write the fileset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from client import task
from conf.loader import load_config, to_object
from contract.messages import CensusReply, QCCountsReply, QCDecision
from contract.wire import to_record, to_wire
from g2i_models.autoencoder import build_autoencoder, latent_size
from g2i_models.pipeline import library_versions
from g2i_models.synthetic import sample_profiles
from g2i_models.unet import build_denoiser
from preprocessing.census import site_census
from preprocessing.federated_qc import federated_variant_qc, site_counts
from server.strategy import build_strategy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qc_vs_plink import make_fileset  # noqa: E402

SERVER_NODE, SITE_NODE = 1, 2
MB = 1e6


class OneSiteGrid:
    """What a strategy asks of the Grid when it builds a round's messages: the node IDs."""

    def get_node_ids(self) -> Iterable[int]:
        return [SITE_NODE]


def sizes(msg: Message) -> dict[str, int]:
    """Wire bytes (deflated Flower objects, deduplicated) and one-protobuf bytes."""
    objects = get_all_nested_objects(msg)
    return {
        "wire": sum(len(o.deflate()) for o in objects.values()),
        "proto": message_to_proto(msg).ByteSize(),
    }


def instruction(content: RecordDict, message_type: str) -> Message:
    """A server message to the site, with the ID the SuperLink would give it."""
    msg = Message(content, dst_node_id=SITE_NODE, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def reply(content: RecordDict, to: Message) -> Message:
    return Message(content, reply_to=to)


def round_messages(
    phase: str, weights: Mapping[str, np.ndarray], config: dict[str, Any], fed: Any, privacy: Any
) -> dict[tuple[str, str], Message]:
    """One training round of ``phase`` (train + evaluate, down and up) as the apps build it."""
    strategy = build_strategy(replace(fed, min_sites=1), privacy, n_sites=1)
    record = to_record(weights)
    phase_config = ConfigRecord({**config, "phase": phase})
    (train,) = strategy.configure_train(1, record, phase_config, OneSiteGrid())
    (evaluate,) = strategy.configure_evaluate(1, record, phase_config, OneSiteGrid())
    for m in (train, evaluate):
        m.metadata.__dict__["_message_id"] = m.object_id
    # The reply metrics of task.train_*_round (values do not change the size).
    metrics = {"loss": 0.1, "l1": 0.1, "kl": 0.1, "steps": 5.0, "num-examples": 40.0}
    if phase == "ldm":
        metrics = {"loss": 0.1, "mse": 0.1, "steps": 5.0, "num-examples": 40.0}
    val = {"l1": 0.1, "psnr": 20.0, "ssim": 0.5} if phase == "ae" else {"mse": 0.1}
    return {
        ("train", "down"): train,
        ("train", "up"): reply(
            RecordDict({"arrays": to_record(weights), "metrics": MetricRecord(metrics)}), train
        ),
        ("evaluate", "down"): evaluate,
        ("evaluate", "up"): reply(
            RecordDict({"metrics": MetricRecord({**val, "num-examples": 8.0})}), evaluate
        ),
    }


def qc_messages(
    cohort: Path, qc: Any, n_snps: int, n_samples: int = 300
) -> tuple[dict[str, Message], int]:
    """Phase 0 of the cohort's site-0: census, QC counts, keep-list. With ``n_snps`` > 0 the
    counts and keep-list are those of a generated array-scale site (``n_samples`` x
    ``n_snps``, chr1-22 + X, case/control, as in benchmarks/qc_vs_plink.py)."""
    site_dirs = sorted(p for p in cohort.glob("site-*") if p.is_dir())
    counts = [task.qc_counts(task.Site(d, d, d), qc)[0] for d in site_dirs]
    first = counts[0]
    decision = federated_variant_qc(counts, qc)
    if n_snps > 0:
        with tempfile.TemporaryDirectory(prefix="qc-bytes-") as tmp:
            make_fileset(Path(tmp) / "site", n_samples, n_snps)
            first = site_counts(Path(tmp) / "site", qc)
        decision = federated_variant_qc([first], qc)
    census = instruction(RecordDict(), "query.census")
    qc_query = instruction(RecordDict(), "query.qc_counts")
    prepare = instruction(QCDecision(decision).to_record(), "query.prepare")
    census_reply = CensusReply(site_dirs[0].name, site_census(site_dirs[0]))
    msgs = {
        "census down": census,
        "census up": reply(census_reply.to_record(), census),
        "QC counts down": qc_query,
        "QC counts up": reply(QCCountsReply(first, asdict(qc)).to_record(), qc_query),
        "QC keep-list down": prepare,
    }
    return msgs, int(np.sum(first.to_arrays()["chrom-runs"][1]))


def prepare_reply(prepare: Message, panel: list[str]) -> Message:
    """The site's answer to ``prepare``: split counts, its SNP names, per-diagnosis counts."""
    counts = {"n-train": 43, "n-val": 8, "n-test": 8, "n-excluded": 0}
    per_dx = np.zeros((3, len(panel), 4), dtype=np.int64)
    return reply(
        RecordDict(
            {
                "counts": MetricRecord(counts),
                "panel": ConfigRecord({"snps": panel}),
                "panel-counts": to_record({"per-dx": per_dx}),
            }
        ),
        prepare,
    )


def measure(
    experiment: str,
    cohort: Path,
    qc_snps: int,
    qc_samples: int,
    wire_dtype: str = "float16",
    evaluate_every: int | None = None,
) -> dict[str, Any]:
    cfg = load_config(experiment, f"data.root={cohort}")
    model_cfg, data = to_object(cfg.model), to_object(cfg.data)
    fed, privacy = to_object(cfg.federation), to_object(cfg.privacy)
    if evaluate_every is not None:
        fed = replace(fed, evaluate_every=evaluate_every)
    dtype = getattr(torch, wire_dtype)
    panel = json.loads((cohort / "prepared" / "site-0" / "prepared" / "manifest.json").read_text())[
        "snp_names"
    ]
    ae = build_autoencoder(model_cfg, data.image_size)
    ae_weights = to_wire(ae.state_dict(), dtype)
    denoiser = build_denoiser(model_cfg, len(panel), latent_size(ae), panel)
    ldm_weights = to_wire(denoiser.state_dict(), dtype)
    base = {"panel": panel, "seed": cfg.seed, "total-dp-steps": 0}

    msgs: dict[str, Message] = {}
    qc, n_counted = qc_messages(cohort, data.qc, 0)
    msgs.update(qc)
    msgs["prepare up"] = prepare_reply(msgs["QC keep-list down"], panel)
    if qc_snps > 0:
        big, _ = qc_messages(cohort, data.qc, qc_snps, qc_samples)
        scale = f"{qc_snps:,} SNPs, {qc_samples} samples"
        msgs[f"QC counts up ({scale})"] = big["QC counts up"]
        msgs[f"QC keep-list down ({scale})"] = big["QC keep-list down"]
    for phase, weights, extra in (
        ("ae", ae_weights, {}),
        ("ldm", ldm_weights, {"scale": 1.0}),
    ):
        for (kind, direction), m in round_messages(
            phase, weights, {**base, **extra}, fed, privacy
        ).items():
            msgs[f"{phase.upper()} round: {kind} {direction}"] = m
    stats = instruction(
        RecordDict(
            {"arrays": to_record(ae_weights), "config": ConfigRecord({**base, "phase": "ae"})}
        ),
        "query.latent_stats",
    )
    msgs["latent stats down"] = stats
    moments = {"count": 1.0, "sum": 1.0, "sum-sq": 1.0, "num-examples": 43.0}
    msgs["latent stats up"] = reply(RecordDict({"moments": MetricRecord(moments)}), stats)
    n = fed.synthetic_per_class
    freqs = np.full((3, len(panel), 3), 1 / 3)
    rng = np.random.default_rng(0)
    images = rng.random((3 * n, 1, data.image_size, data.image_size), dtype=np.float32)
    genotypes = np.concatenate([sample_profiles(freqs, k, n, rng) for k in range(3)])
    synthetic = instruction(
        RecordDict(
            {
                "arrays": to_record(
                    {"images": images, "labels": np.repeat(np.arange(3), n), "genotypes": genotypes}
                ),
                "config": ConfigRecord({"panel": panel}),
            }
        ),
        "query.synthetic",
    )
    msgs["synthetic set down"] = synthetic
    msgs["synthetic set up"] = reply(
        RecordDict({"stored": MetricRecord({"n-images": 3 * n})}), synthetic
    )
    rows = {name: sizes(m) for name, m in msgs.items()}
    # A round always trains; it evaluates on the phase's last round and every
    # federation.evaluate_every-th: per round, the evaluate messages count by that share.
    per_round = {}
    for phase in ("AE", "LDM"):
        n = fed.rounds_ae if phase == "AE" else fed.rounds_ldm
        every = fed.evaluate_every
        share = len({r for r in range(1, n + 1) if r == n or (every and r % every == 0)}) / n
        for direction in ("down", "up"):
            per_round[f"{phase} round {direction}"] = sum(
                v["wire"] * (share if ": evaluate " in k else 1.0)
                for k, v in rows.items()
                if k.startswith(f"{phase} round") and k.endswith(direction)
            )
    return {
        "experiment": experiment,
        "image_size": data.image_size,
        "panel_snps": len(panel),
        "qc_snps": n_counted,
        "synthetic_images": 3 * n,
        "ae_params": int(sum(a.size for a in ae_weights.values())),
        "ldm_params": int(sum(a.size for a in ldm_weights.values())),
        "messages": rows,
        "per_round_wire": per_round,
        "rounds": {"ae": fed.rounds_ae, "ldm": fed.rounds_ldm},
        "wire_dtype": wire_dtype,
        "evaluate_every": fed.evaluate_every,
    }


def measure_qc(experiment: str, cohort: Path, qc_snps: int, qc_samples: int) -> dict[str, Any]:
    """Phase 0 only (census and QC messages): needs the cohort's site-* genotypes, not a
    prepared site or the models."""
    data = to_object(load_config(experiment, f"data.root={cohort}").data)
    msgs, n_counted = qc_messages(cohort, data.qc, 0)
    if qc_snps > 0:
        big, _ = qc_messages(cohort, data.qc, qc_snps, qc_samples)
        scale = f"{qc_snps:,} SNPs, {qc_samples} samples"
        msgs[f"QC counts up ({scale})"] = big["QC counts up"]
        msgs[f"QC keep-list down ({scale})"] = big["QC keep-list down"]
    rows = {name: sizes(m) for name, m in msgs.items()}
    return {"experiment": experiment, "qc_snps": n_counted, "messages": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=["tiny", "paper"])
    parser.add_argument(
        "--cohort",
        type=Path,
        default=Path("data/cohort"),
        help="cohort with site-* folders and prepared/site-0 (its SNP panel)",
    )
    parser.add_argument(
        "--qc-snps",
        type=int,
        default=620_000,
        help="also size the QC messages at this many SNPs (0: cohort only)",
    )
    parser.add_argument(
        "--qc-samples",
        type=int,
        default=300,
        help="samples of the array-scale site (ADNI-1's 900 over 3 sites: 300)",
    )
    parser.add_argument(
        "--qc-only",
        action="store_true",
        help="only the census and QC messages (a cohort without prepared sites will do); "
        "default --out benchmarks/results/bytes_per_round_qc.json",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--wire-dtype", choices=["float16", "float32"], default="float16",
        help="weights' dtype on the wire (float32: the scheme before float16)",
    )
    parser.add_argument(
        "--evaluate-every", type=int, default=None,
        help="override federation.evaluate_every (1: every round evaluates, as before)",
    )
    args = parser.parse_args()
    # The IDs a ServerApp/ClientApp process gets from its runtime; they only fill metadata.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE, 1
    cohort = args.cohort.resolve()
    name = "bytes_per_round_qc.json" if args.qc_only else "bytes_per_round.json"
    args.out = args.out or Path("benchmarks/results") / name
    if args.qc_only:
        results = [measure_qc(e, cohort, args.qc_snps, args.qc_samples) for e in args.experiments]
    else:
        results = [
            measure(e, cohort, args.qc_snps, args.qc_samples, args.wire_dtype, args.evaluate_every)
            for e in args.experiments
        ]
    names = list(results[0]["messages"])
    head = " | ".join(f"{r['experiment']} wire MB | {r['experiment']} proto MB" for r in results)
    print("MB = 10^6 bytes, per site; rounds are per round, the rest once per run")
    print(f"| message | {head} |")
    print("|---|" + "---|" * (2 * len(results)))
    for name in names:
        cells = " | ".join(
            f"{r['messages'][name]['wire'] / MB:.4g} | {r['messages'][name]['proto'] / MB:.4g}"
            for r in results
        )
        print(f"| {name} | {cells} |")
    if not args.qc_only:
        print()
        print(
            "| per site per round (wire MB) | "
            + " | ".join(r["experiment"] for r in results)
            + " |"
        )
        print("|---|" + "---|" * len(results))
        for key in results[0]["per_round_wire"]:
            cells = " | ".join(f"{r['per_round_wire'][key] / MB:.3f}" for r in results)
            print(f"| {key} | {cells} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "unit": "bytes per site; MB in the table = 10^6 bytes",
        "load_average": os.getloadavg(),
        "versions": library_versions(),
        "rows": results,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
