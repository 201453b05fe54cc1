"""Every message between the ServerApp and a site: its type, and its request and reply
records with their keys. The apps build and read messages only through these classes.

Queries travel as ``query.<name>``; training rounds use Flower's ``train`` / ``evaluate``
messages, whose records are named by the strategy (``ARRAYS``, ``CONFIG``) and the site
(``ARRAYS``, ``METRICS``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from contract.wire import arrays_digest, from_record, to_record
from preprocessing.federated_qc import FederatedQCResult, SiteCounts

# Record names of Flower's train / evaluate messages (the strategies' defaults).
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
# A metric every training reply carries as 1: central DP averages with equal weights.
UNIT_WEIGHT = "unit-weight"


class Query(StrEnum):
    """The one-shot queries; the wire message type is ``query.<value>``."""

    CENSUS = "census"
    QC_COUNTS = "qc_counts"
    PREPARE = "prepare"
    LATENT_STATS = "latent_stats"
    SYNTHETIC = "synthetic"
    EVALUATE_SYNTHETIC = "evaluate_synthetic"

    @property
    def message_type(self) -> str:
        return f"query.{self.value}"


class Phase(StrEnum):
    AE = "ae"
    LDM = "ldm"


def _config(content: RecordDict, key: str) -> ConfigRecord:
    if key not in content.config_records:
        raise KeyError(f"the message has no ConfigRecord {key!r}; the peer speaks another contract")
    return content.config_records[key]


def _arrays(content: RecordDict, key: str) -> dict[str, np.ndarray]:
    if key not in content.array_records:
        raise KeyError(f"the message has no ArrayRecord {key!r}; the peer speaks another contract")
    return from_record(content.array_records[key])


def _metrics(content: RecordDict, key: str) -> MetricRecord:
    if key not in content.metric_records:
        raise KeyError(f"the message has no MetricRecord {key!r}; the peer speaks another contract")
    return content.metric_records[key]


@dataclass
class CensusReply:
    """Subjects per diagnosis, scans, genotyped samples; counts below the site's minimum
    cell size are sent as 0 and named in ``suppressed``."""

    site: str
    counts: dict[str, int]
    suppressed: list[str] = field(default_factory=list)

    def to_record(self) -> RecordDict:
        return RecordDict(
            {
                "census": MetricRecord(dict(self.counts)),
                "site": ConfigRecord({"name": self.site, "suppressed": list(self.suppressed)}),
            }
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> CensusReply:
        site = _config(content, "site")
        return cls(
            str(site["name"]),
            {k: int(v) for k, v in _metrics(content, "census").items()},
            [str(s) for s in site.get("suppressed", [])],
        )


@dataclass
class QCCountsReply:
    """Per-SNP genotype counts after the site's own ``--mind``, the thresholds the site
    applied (its policy), and the groups it suppressed or merged."""

    counts: SiteCounts
    thresholds: dict[str, float | bool]
    suppressed: list[str] = field(default_factory=list)

    def to_record(self) -> RecordDict:
        return RecordDict(
            {
                "counts": to_record(self.counts.to_arrays()),
                "qc": ConfigRecord({**self.thresholds, "suppressed": list(self.suppressed)}),
            }
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> QCCountsReply:
        qc = dict(_config(content, "qc"))
        suppressed = [str(s) for s in qc.pop("suppressed", [])]
        return cls(SiteCounts.from_arrays(_arrays(content, "counts")), qc, suppressed)


@dataclass
class QCDecision:
    """The federation's keep-list and A1/A2 orientation (the request of ``prepare``)."""

    decision: FederatedQCResult

    def to_record(self) -> RecordDict:
        d = self.decision
        meta = [int(d.hwe_controls_only), d.n_samples, d.n_removed_mind]
        arrays = {
            "status": d.status.astype(np.int8),
            "a2_freq": d.a2_freq.astype(np.float64),
            "reverse": d.reverse.astype(np.int8),
            "meta": np.asarray(meta, dtype=np.int64),
        }
        return RecordDict({"decision": to_record(arrays)})

    @classmethod
    def from_record(cls, content: RecordDict) -> QCDecision:
        a = _arrays(content, "decision")
        ctrl, n, removed = (int(v) for v in a["meta"])
        return cls(
            FederatedQCResult(
                status=np.asarray(a["status"]).astype(np.int8),
                a2_freq=np.asarray(a["a2_freq"], dtype=np.float64),
                reverse=np.asarray(a["reverse"]).astype(bool),
                hwe_controls_only=bool(ctrl),
                n_samples=n,
                n_removed_mind=removed,
            )
        )

    def digest(self) -> str:
        return arrays_digest(from_record(self.to_record()["decision"]))


@dataclass
class PrepareReply:
    """Subjects per split, the site's SNP panel, and per-diagnosis genotype counts of the
    training split: per_dx (3, n_snps, 4) int64 over codes 0/1/2/missing, zero for a
    diagnosis group below the minimum cell size (named in ``suppressed``)."""

    counts: dict[str, int]
    snps: list[str]
    per_dx: np.ndarray
    suppressed: list[str] = field(default_factory=list)

    def to_record(self) -> RecordDict:
        return RecordDict(
            {
                "counts": MetricRecord(dict(self.counts)),
                "panel": ConfigRecord(
                    {"snps": list(self.snps), "suppressed": list(self.suppressed)}
                ),
                "panel-counts": to_record({"per-dx": self.per_dx}),
            }
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> PrepareReply:
        panel = _config(content, "panel")
        return cls(
            {k: int(v) for k, v in _metrics(content, "counts").items()},
            [str(s) for s in panel["snps"]],
            _arrays(content, "panel-counts")["per-dx"],
            [str(s) for s in panel.get("suppressed", [])],
        )


@dataclass
class RoundConfig:
    """What the server asks of one local run (train, evaluate, latent statistics). The
    strategy adds ``server-round`` (and FedProx ``proximal-mu``, central DP
    ``clipping_norm``) itself."""

    phase: str
    panel: list[str]
    seed: int
    total_dp_steps: int = 0
    round_offset: int = 0
    scale: float = 1.0
    proximal_mu: float = 0.0
    server_round: int = 0

    _WIRE = {
        "phase": "phase",
        "panel": "panel",
        "seed": "seed",
        "total_dp_steps": "total-dp-steps",
        "round_offset": "round-offset",
        "scale": "scale",
        "proximal_mu": "proximal-mu",
        "server_round": "server-round",
    }

    def to_config(self) -> ConfigRecord:
        values = asdict(self)
        values["phase"] = str(self.phase)
        values.pop("server_round")  # set by the strategy
        if not self.proximal_mu:
            values.pop("proximal_mu")  # FedProx sets it
        return ConfigRecord({self._WIRE[k]: v for k, v in values.items()})

    @classmethod
    def from_config(cls, config: ConfigRecord) -> RoundConfig:
        values: dict[str, Any] = {}
        for f in fields(cls):
            wire = cls._WIRE.get(f.name)
            if wire and wire in config:
                values[f.name] = config[wire]
        values["panel"] = [str(s) for s in values.get("panel", [])]
        kinds = {"seed": int, "total_dp_steps": int, "round_offset": int, "server_round": int}
        for k, kind in {**kinds, "scale": float, "proximal_mu": float}.items():
            if k in values:
                values[k] = kind(values[k])
        return cls(**values)

    @property
    def round(self) -> int:
        """The federation's round of this phase, counting rounds before a resume."""
        return self.server_round + self.round_offset


@dataclass
class LatentStatsRequest:
    """The global autoencoder after phase 1, for the latent moments. ``moments`` False (the
    autoencoder and its scale came from the public stage): the site keeps the autoencoder
    and releases no moments of its data."""

    ae: dict[str, np.ndarray]
    config: RoundConfig
    moments: bool = True

    def to_record(self) -> RecordDict:
        return RecordDict(
            {
                ARRAYS: to_record(self.ae),
                CONFIG: self.config.to_config(),
                "latent": ConfigRecord({"moments": self.moments}),
            }
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> LatentStatsRequest:
        latent = content.config_records.get("latent", {})
        return cls(
            _arrays(content, ARRAYS),
            RoundConfig.from_config(_config(content, CONFIG)),
            bool(latent.get("moments", True)),
        )


@dataclass
class LatentMoments:
    """(count, sum, sum of squares) of a site's training latents."""

    count: float
    sum: float
    sum_sq: float
    num_examples: float

    def to_record(self) -> RecordDict:
        m = {"count": self.count, "sum": self.sum, "sum-sq": self.sum_sq}
        return RecordDict({"moments": MetricRecord({**m, "num-examples": self.num_examples})})

    @classmethod
    def from_record(cls, content: RecordDict) -> LatentMoments:
        m = _metrics(content, "moments")
        return cls(
            float(m["count"]), float(m["sum"]), float(m["sum-sq"]), float(m["num-examples"])
        )


@dataclass
class SyntheticSet:
    """The synthetic set the federation generated: images (N, 1, H, W) float32, labels (N,),
    genotypes (N, n_snps) over ``panel``."""

    images: np.ndarray
    labels: np.ndarray
    genotypes: np.ndarray
    panel: list[str]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"images": self.images, "labels": self.labels, "genotypes": self.genotypes}

    def digest(self) -> str:
        """What a site records on receipt and the audit request must name."""
        return arrays_digest(self.arrays())

    def to_record(self) -> RecordDict:
        return RecordDict(
            {ARRAYS: to_record(self.arrays()), CONFIG: ConfigRecord({"panel": self.panel})}
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> SyntheticSet:
        a = _arrays(content, ARRAYS)
        panel = [str(s) for s in _config(content, CONFIG)["panel"]]
        return cls(a["images"], a["labels"], a["genotypes"], panel)


@dataclass
class SyntheticReceipt:
    n_images: int
    digest: str

    def to_record(self) -> RecordDict:
        return RecordDict(
            {
                "stored": MetricRecord({"n-images": self.n_images}),
                "receipt": ConfigRecord({"digest": self.digest}),
            }
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> SyntheticReceipt:
        return cls(
            int(_metrics(content, "stored")["n-images"]),
            str(_config(content, "receipt")["digest"]),
        )


# EvaluationConfig field -> wire key of the settings the server may send (the audit's
# quantile and frequency are the site's policy, not the server's).
EVALUATION_KEYS = {
    "classifier_per_class": "classifier-per-class",
    "classifier_epochs": "classifier-epochs",
    "classifier_patience": "classifier-patience",
    "classifier_val_fraction": "classifier-val-fraction",
    "classifier_batch_size": "classifier-batch-size",
    "classifier_lr": "classifier-lr",
    "classifier_seeds": "classifier-seeds",
}


@dataclass
class EvaluateSyntheticRequest:
    """Score the synthetic set the site received (named by its digest)."""

    digest: str
    settings: dict[str, Any]  # EVALUATION_KEYS values by field name

    def to_record(self) -> RecordDict:
        values = {EVALUATION_KEYS[k]: v for k, v in self.settings.items() if k in EVALUATION_KEYS}
        return RecordDict({CONFIG: ConfigRecord({**values, "digest": self.digest})})

    @classmethod
    def from_record(cls, content: RecordDict) -> EvaluateSyntheticRequest:
        config = _config(content, CONFIG)
        unknown = sorted(set(config) - set(EVALUATION_KEYS.values()) - {"digest"})
        if unknown:
            raise KeyError(f"evaluate_synthetic: unknown settings {unknown}")
        settings = {k: config[w] for k, w in EVALUATION_KEYS.items() if w in config}
        return cls(str(config.get("digest", "")), settings)


@dataclass
class SiteEvaluation:
    """Flat metrics of the downstream comparison and the aggregate memorisation audit."""

    downstream: dict[str, Any]
    memorisation: dict[str, Any]

    def to_record(self) -> RecordDict:
        return RecordDict(
            {
                "downstream": MetricRecord(self.downstream),
                "memorisation": MetricRecord(self.memorisation),
            }
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> SiteEvaluation:
        return cls(
            dict(_metrics(content, "downstream")), dict(_metrics(content, "memorisation"))
        )


def train_reply(arrays: dict[str, np.ndarray], metrics: dict[str, Any]) -> RecordDict:
    """A training round's reply: the local weights and metrics (with ``num-examples``)."""
    return RecordDict(
        {ARRAYS: to_record(arrays), METRICS: MetricRecord({**metrics, UNIT_WEIGHT: 1})}
    )


def metrics_reply(metrics: dict[str, Any]) -> RecordDict:
    """An evaluate round's reply: metrics only (with ``num-examples``)."""
    return RecordDict({METRICS: MetricRecord(metrics)})


def reply_arrays(content: RecordDict) -> ArrayRecord | None:
    """The weights of a training reply, or None when it has none."""
    return content.array_records.get(ARRAYS)


def reply_metrics(content: RecordDict) -> MetricRecord:
    return content.metric_records.get(METRICS, MetricRecord())
