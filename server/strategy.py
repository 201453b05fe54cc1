"""Aggregation strategies from config, and a guard around them that keeps a round alive.

``GuardedStrategy`` wraps any Flower strategy: replies that carry an error (a site that
crashed, ran out of privacy budget, had bad data) or non-finite arrays are dropped and
recorded before the inner strategy aggregates; when fewer than ``min_sites`` good updates are
left, the round fails with a clear error. Every site's reply metrics are kept per round, so
the per-site privacy ledger survives Flower's weighted averaging of metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl

from client.records import error_summary
from conf.schema import FederationConfig, PrivacyConfig

STRATEGIES: dict[str, Callable[..., fl.Strategy]] = {
    "FedAvg": fl.FedAvg,
    "FedProx": fl.FedProx,
    "FedAdam": fl.FedAdam,
    "FedYogi": fl.FedYogi,
    "FedAdagrad": fl.FedAdagrad,
    "FedAvgM": fl.FedAvgM,
    "FedMedian": fl.FedMedian,
    "FedTrimmedAvg": fl.FedTrimmedAvg,
    "Krum": fl.Krum,
}


class TooFewSitesError(RuntimeError):
    """Fewer sites than ``federation.min_sites`` delivered a usable update."""


def build_strategy(fed: FederationConfig, privacy: PrivacyConfig, n_sites: int) -> fl.Strategy:
    """The configured Flower strategy, wrapped for central DP when ``privacy.mode`` asks."""
    if fed.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {fed.strategy!r}; choose one of {sorted(STRATEGIES)}")
    kwargs: dict[str, Any] = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": fed.fraction_evaluate,
        "min_train_nodes": fed.min_sites,
        "min_evaluate_nodes": fed.min_sites,
        "min_available_nodes": fed.min_sites,
    }
    if fed.strategy == "FedProx":
        kwargs["proximal_mu"] = fed.proximal_mu
    if fed.strategy in ("FedAdam", "FedYogi", "FedAdagrad"):
        kwargs["eta"] = fed.server_lr
    strategy = STRATEGIES[fed.strategy](**kwargs)
    if privacy.mode == "central_dp":
        n_sampled = max(fed.min_sites, int(round(fed.fraction_train * n_sites)))
        strategy = fl.DifferentialPrivacyClientSideFixedClipping(
            strategy,
            noise_multiplier=privacy.noise_multiplier,
            clipping_norm=privacy.max_grad_norm,
            num_sampled_clients=n_sampled,
        )
    return strategy


def arrays_finite(record: ArrayRecord) -> bool:
    return all(np.isfinite(a).all() for a in record.to_numpy_ndarrays())


@dataclass
class RoundLog:
    """What happened in one training round."""

    phase: str
    round: int
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


class GuardedStrategy(fl.Strategy):
    """Drop failed and non-finite replies, log per-site metrics, enforce a minimum."""

    def __init__(
        self, inner: fl.Strategy, min_sites: int, phase: str, names: dict[int, str] | None = None
    ) -> None:
        self.inner = inner
        self.min_sites = min_sites
        self.phase = phase
        self.names = names or {}
        self.rounds: list[RoundLog] = []
        self.round_offset = 0  # rounds done before a resume

    def _name(self, node_id: int) -> str:
        return self.names.get(node_id, str(node_id))

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        log = RoundLog(self.phase, server_round + self.round_offset)
        good = []
        for reply in replies:
            name = self._name(reply.metadata.src_node_id)
            if reply.has_error():
                log.failures[name] = error_summary(reply)
                continue
            record = next(iter(reply.content.array_records.values()), None)
            if record is None or not arrays_finite(record):
                log.failures[name] = "rejected: non-finite or missing weights"
                continue
            metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
            log.site_metrics[name] = {
                k: float(v) for k, v in metrics.items() if isinstance(v, int | float)
            }
            good.append(reply)
        self.rounds.append(log)
        if len(good) < self.min_sites:
            raise TooFewSitesError(
                f"{self.phase} round {log.round}: {len(good)} usable updates, "
                f"{self.min_sites} needed; failures: {log.failures}"
            )
        return self.inner.aggregate_train(server_round, good)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        good = [r for r in replies if not r.has_error()]
        if self.rounds:
            for r in good:
                metrics = next(iter(r.content.metric_records.values()), MetricRecord())
                self.rounds[-1].site_metrics.setdefault(self._name(r.metadata.src_node_id), {})
                self.rounds[-1].site_metrics[self._name(r.metadata.src_node_id)].update(
                    {f"val-{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
                )
        return self.inner.aggregate_evaluate(server_round, good) if good else None
