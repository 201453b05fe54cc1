"""Calibrated noise on the counts a site releases, charged to the site's privacy ledger.

With the policy's ``count_noise_multiplier`` z > 0, each count release (the census, the QC
counts, the split sizes and per-diagnosis genotype counts of ``prepare``) is a Gaussian
mechanism: every released value gets independent N(0, (z * sensitivity)^2) noise, where the
sensitivity is the release's L2 sensitivity to adding or removing one subject, computed from
what the release holds. The draws come from a generator seeded by the OS's CSPRNG, fresh for
every release, so the server can neither choose nor reproduce them. The release costs
alpha / (2 z^2) in Renyi DP whatever its size; it is recorded in the site's ledger (in
deployment the lifetime one, beside DP-SGD's steps) before the reply leaves, and a release
that would take epsilon past the policy's budget is refused.

Rounding, clipping at zero and the small-cell rule are then applied to the noisy values
only (post-processing: no further privacy cost). With z = 0 the counts are exact and the
small-cell rule works on the exact counts (``preprocessing.federated_qc``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conf.schema import SitePolicy
from g2i_models.privacy import PrivacyBudgetExceeded, PrivacyLedger
from preprocessing.federated_qc import gaussian_counts

# A subject adds one to its diagnosis, subjects, scans, genotyped and complete (site_census).
CENSUS_SENSITIVITY = math.sqrt(5)


@dataclass
class CountNoise:
    """The noise of one release: multiplier z and a secret generator."""

    multiplier: float
    rng: np.random.Generator
    epsilon: float = 0.0  # the site's epsilon after this release

    def gaussian(self, values: np.ndarray | int, sensitivity: float) -> np.ndarray:
        """``values`` + N(0, (z * sensitivity)^2), rounded, at least 0 (int64)."""
        return gaussian_counts(values, self.multiplier * sensitivity, self.rng)

    def census(self, counts: Mapping[str, int]) -> dict[str, int]:
        names = list(counts)
        noisy = self.gaussian([counts[k] for k in names], CENSUS_SENSITIVITY)
        return {k: int(v) for k, v in zip(names, noisy, strict=True)}

    def note(self, sensitivity: float) -> str:
        return (
            f"counts noised (Gaussian, std {self.multiplier:g} x sensitivity "
            f"{sensitivity:.1f}); site epsilon now {self.epsilon:.3f}"
        )


def secret_rng() -> np.random.Generator:
    """A numpy generator seeded from the OS's CSPRNG (128 bits), fresh on every call."""
    return np.random.default_rng(secrets.randbits(128))


def charge(ledger_path: Path, policy: SitePolicy, kind: str) -> CountNoise | None:
    """Record one count release of ``kind`` in the site's ledger and return its noise, or
    None when the policy releases exact counts. Refuses (``PrivacyBudgetExceeded``) when the
    release would take the site's epsilon past ``policy.epsilon_budget`` (0 = no budget)."""
    z = float(policy.count_noise_multiplier)
    if z <= 0:
        return None
    ledger = PrivacyLedger.load(ledger_path)
    after = ledger.epsilon(policy.delta, (z, 1.0, 1))
    if policy.epsilon_budget > 0 and after > policy.epsilon_budget:
        raise PrivacyBudgetExceeded(
            f"privacy budget: releasing the {kind} counts (noise multiplier {z:g}) would take "
            f"epsilon from {ledger.epsilon(policy.delta):.3f} to {after:.3f}, past the budget "
            f"of {policy.epsilon_budget} (delta {policy.delta})"
        )
    ledger.releases.append((z, kind))
    ledger.save(ledger_path)
    return CountNoise(z, secret_rng(), after)
