"""Run outputs the server writes: privacy ledger, metrics, per-round plots."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from opacus.accountants import RDPAccountant  # noqa: E402

from conf.schema import PrivacyConfig  # noqa: E402

OPACUS_LOG_FORMAT = "%(asctime)s:%(levelname)s:%(message)s"


def drop_opacus_root_handler() -> None:
    """Undo the ``logging.basicConfig`` that ``opacus.utils.module_utils`` runs at import.

    It puts a stderr handler on the root logger; Flower's own logger propagates to the root,
    so in the ServerApp every log line, and every line ``flwr run --stream`` shows, appeared
    twice (once in Flower's format, once in Opacus's).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        formatter = handler.formatter
        if formatter is not None and formatter._fmt == OPACUS_LOG_FORMAT:
            root.removeHandler(handler)


drop_opacus_root_handler()

LEDGER_FIELDS = (
    "phase",
    "round",
    "site",
    "mechanism",
    "epsilon",
    "delta",
    "noise_multiplier",
    "sample_rate",
    "dp_steps",
)


TRAINING_PHASES = ("ae", "ldm")


def training_rounds(
    rounds: list[dict[str, Any]], aggregated_only: bool = True
) -> list[dict[str, Any]]:
    """The rounds.jsonl lines of training rounds (not the one-shot steps' failure lines);
    with ``aggregated_only``, not a round stopped for too few usable updates either."""
    return [
        r
        for r in rounds
        if r["phase"] in TRAINING_PHASES and (r.get("aggregated", True) or not aggregated_only)
    ]


def failures_by_site(rounds: list[dict[str, Any]]) -> dict[str, list[str]]:
    """metrics.json's ``failures``: per site, ``"<phase>[ round <n>]: <reason>"`` in the order
    they happened, from every rounds.jsonl line (training rounds and one-shot steps)."""
    out: dict[str, list[str]] = {}
    for r in rounds:
        where = r["phase"] if r.get("round") is None else f"{r['phase']} round {r['round']}"
        for site, reason in r.get("failures", {}).items():
            out.setdefault(site, []).append(f"{where}: {reason}")
    return out


def privacy_ledger(
    rounds: list[dict[str, Any]], privacy: PrivacyConfig, n_sampled: int, n_sites: int
) -> list[dict[str, Any]]:
    """Per site and round, the epsilon spent so far (cumulative over rounds and phases).

    ``dp_sgd``: what each site's own RDP accountant reported (sample-level DP at the site).
    ``central_dp``: site-level DP of the aggregate, one Gaussian mechanism per round with
    noise multiplier sigma on the clipped sum and sampling rate n_sampled / n_sites.
    """
    rows: list[dict[str, Any]] = []
    # A site's DP-SGD spent its budget even when the round was stopped later; the central
    # mechanism ran only on rounds that were aggregated.
    rounds = training_rounds(rounds, aggregated_only=privacy.mode != "dp_sgd")
    if privacy.mode == "dp_sgd":
        for r in rounds:
            for site, m in sorted(r["site_metrics"].items()):
                if "epsilon" in m:
                    rows.append(
                        {
                            "phase": r["phase"],
                            "round": r["round"],
                            "site": site,
                            "mechanism": "local DP-SGD (RDP)",
                            "epsilon": m["epsilon"],
                            "delta": m.get("delta", privacy.delta),
                            "noise_multiplier": m.get("noise-multiplier", ""),
                            "sample_rate": m.get("dp-sample-rate", ""),
                            "dp_steps": int(m.get("dp-steps", 0)),
                        }
                    )
    elif privacy.mode == "central_dp":
        acc = RDPAccountant()
        q = min(1.0, n_sampled / max(1, n_sites))
        for k, r in enumerate(rounds, start=1):
            acc.history.append((privacy.noise_multiplier, q, 1))
            rows.append(
                {
                    "phase": r["phase"],
                    "round": r["round"],
                    "site": "all (aggregate)",
                    "mechanism": "central DP, client-side fixed clipping (RDP)",
                    "epsilon": float(acc.get_epsilon(privacy.delta)),
                    "delta": privacy.delta,
                    "noise_multiplier": privacy.noise_multiplier,
                    "sample_rate": q,
                    "dp_steps": k,
                }
            )
    return rows


def write_ledger(rows: list[dict[str, Any]], run_dir: Path) -> Path:
    path = run_dir / "privacy_ledger.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LEDGER_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (run_dir / "privacy_ledger.json").write_text(json.dumps(rows, indent=2) + "\n")
    return path


def plot_rounds(rounds: list[dict[str, Any]], path: Path) -> Path:
    """Training loss and validation metric per round, one line per site."""
    rounds = training_rounds(rounds)
    phases = [p for p in ("ae", "ldm") if any(r["phase"] == p for r in rounds)]
    fig, axes = plt.subplots(
        1, max(1, len(phases)), figsize=(5 * max(1, len(phases)), 3.5), squeeze=False
    )
    for ax, phase in zip(axes[0], phases, strict=False):
        rs = [r for r in rounds if r["phase"] == phase]
        sites = sorted({s for r in rs for s in r["site_metrics"]})
        for site in sites:
            xs = [r["round"] for r in rs if site in r["site_metrics"]]
            ys = [
                r["site_metrics"][site].get("loss", float("nan"))
                for r in rs
                if site in r["site_metrics"]
            ]
            ax.plot(xs, ys, marker="o", label=f"{site} train loss")
        ax.set_title({"ae": "autoencoder", "ldm": "latent diffusion"}[phase])
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
