"""Aggregation strategies from config, and a guard around them that keeps a round alive.

``GuardedStrategy`` wraps any Flower strategy: replies that carry an error (a site that
crashed, ran out of privacy budget, had bad data), messages that got no reply, and replies
with non-finite arrays are dropped and recorded before the inner strategy aggregates; when
fewer than ``min_sites`` good updates are left, the round fails with a clear error. Every
site's reply metrics are kept per round, so the per-site privacy ledger survives Flower's
weighted averaging of metrics.

Failures are named by the site a message was *sent to*: when a SuperNode dies, the SuperLink
answers in its place, and that error reply's ``src_node_id`` is the SuperLink's own ID (1),
not the site's. ``sort_replies`` matches each reply to its message by ``reply_to_message_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase

from conf.schema import FederationConfig, PrivacyConfig
from contract.messages import ARRAYS, UNIT_WEIGHT, reply_arrays, reply_metrics
from contract.wire import error_summary

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


NO_REPLY = "no reply before the timeout"


class TooFewSitesError(RuntimeError):
    """Fewer sites than ``federation.min_sites`` delivered a usable update."""


def site_names(grid: Grid) -> dict[int, str]:
    """Node ID -> the name its SuperNode was registered under (``flwr supernode register
    --name``); empty for nodes without one (simulation)."""
    return {int(node.node_id): str(node.name) for node in grid.get_nodes() if node.name}


def site_name(names: dict[int, str], node_id: int) -> str:
    """The site's name, or ``node <id>`` for a node that never told its name."""
    return names.get(node_id, f"node {node_id}")


def sort_replies(
    sent: Sequence[Message], replies: Iterable[Message]
) -> tuple[dict[int, Message], dict[int, str]]:
    """(good replies, failure reasons), both by the node each message was sent to.

    ``sent`` are the messages after the grid pushed them (the grid sets their message IDs in
    place). A reply that matches no sent message keeps its ``src_node_id``; a sent message
    without a reply is a failure too.
    """
    destination = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
    good: dict[int, Message] = {}
    failed: dict[int, str] = {}
    for reply in replies:
        node = destination.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if reply.has_error():
            failed[node] = error_summary(reply)
        else:
            good[node] = reply
    for message in sent:
        node = message.metadata.dst_node_id
        if node not in good and node not in failed:
            failed[node] = NO_REPLY
    return good, failed


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
    if fed.strategy == "FedAvgM":
        kwargs["server_momentum"] = fed.server_momentum
    if privacy.mode == "central_dp":
        # Equal weights: each site's clipped update moves the mean by at most C / n, the
        # sensitivity the Gaussian noise is calibrated to (size weighting would raise a large
        # site's share above it).
        kwargs["weighted_by_key"] = UNIT_WEIGHT
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


def cast_record(record: ArrayRecord, dtype: type[np.floating]) -> ArrayRecord:
    """The record with its floating arrays in ``dtype`` (names and order kept)."""
    return ArrayRecord(
        array_dict={
            k: Array(np.ascontiguousarray(a.numpy().astype(dtype, copy=False)))
            if np.issubdtype(a.numpy().dtype, np.floating)
            else a
            for k, a in record.items()
        }
    )


def arrays_finite(record: ArrayRecord) -> bool:
    return all(np.isfinite(a).all() for a in record.to_numpy_ndarrays())


@dataclass
class RoundLog:
    """What happened in one training round."""

    phase: str
    round: int | None  # None for a one-shot step (census, QC, synthetic set...)
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    aggregated: bool = True  # False when too few usable updates stopped the round


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
        # Rounds of this start() and which of them evaluate (FederationConfig.evaluate_every).
        self.num_rounds = 0
        self.evaluate_every = 0
        self._sent: list[Message] = []  # this round's messages, to name who failed

    def _name(self, node_id: int) -> str:
        return site_name(self.names, node_id)

    def _keep(self, messages: Iterable[Message]) -> list[Message]:
        self._sent = list(messages)
        return self._sent

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # The global model is kept and averaged in float32; it travels as float16.
        down = cast_record(arrays, np.float16)
        return self._keep(self.inner.configure_train(server_round, down, config, grid))

    def evaluates(self, server_round: int) -> bool:
        """Whether ``server_round`` (of this start()) sends the model out for validation:
        the last round, and every ``evaluate_every``-th of the phase when that is > 0."""
        if self.num_rounds and server_round >= self.num_rounds:
            return True
        every, n = self.evaluate_every, server_round + self.round_offset
        return not self.num_rounds or (every > 0 and n % every == 0)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.evaluates(server_round):
            return self._keep([])
        return self._keep(self.inner.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        log = RoundLog(self.phase, server_round + self.round_offset)
        replied, failed = sort_replies(self._sent, replies)
        log.failures = {self._name(node): reason for node, reason in failed.items()}
        good = []
        for node, reply in replied.items():
            name = self._name(node)
            record = reply_arrays(reply.content)
            if record is None or not arrays_finite(record):
                log.failures[name] = "rejected: non-finite or missing weights"
                continue
            # Average in float32: summing float16 updates would round the global model every
            # round (float16 has 11 significant bits).
            reply.content[ARRAYS] = cast_record(record, np.float32)
            metrics = reply_metrics(reply.content)
            log.site_metrics[name] = {
                k: float(v) for k, v in metrics.items() if isinstance(v, int | float)
            }
            good.append(reply)
        self.rounds.append(log)
        if len(good) < self.min_sites:
            log.aggregated = False
            raise TooFewSitesError(
                f"{self.phase} round {log.round}: {len(good)} usable updates, "
                f"{self.min_sites} needed; failures: {log.failures}"
            )
        if isinstance(self.inner, DifferentialPrivacyFixedClippingBase):
            # Noise for the sites that replied: the mean is over len(good) clipped updates,
            # so its sensitivity is C / len(good), not C / (the number sampled).
            self.inner.num_sampled_clients = len(good)
        # The phase's round number, not this start()'s: FedAdam / FedYogi / FedAdagrad
        # correct their moments' bias by it, so a resumed run continues where it stopped.
        return self.inner.aggregate_train(server_round + self.round_offset, good)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replied, failed = sort_replies(self._sent, replies)
        if self.rounds:
            log = self.rounds[-1]
            for node, reason in failed.items():
                name = self._name(node)
                earlier = log.failures.get(name)
                reason = f"evaluate: {reason}"
                log.failures[name] = f"{earlier}; {reason}" if earlier else reason
            for node, r in replied.items():
                metrics = reply_metrics(r.content)
                log.site_metrics.setdefault(self._name(node), {}).update(
                    {f"val-{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
                )
        good = list(replied.values())
        return self.inner.aggregate_evaluate(server_round, good) if good else None
