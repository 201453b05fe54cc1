"""One simulated site's partition of the synthetic cohort, generated on first use.

A Flower simulation node has a ``partition-id`` and no data of its own; as in Flower's
examples, where each ClientApp loads its partition on first use, a node whose site folder
is absent generates it: the site's files of the cohort that ``g2i-simulate`` would write
with the same cohort config and seed (same bytes), under a cache folder keyed by both,
behind a file lock so that nodes sharing a machine generate each partition once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

from conf.schema import CohortConfig

CACHE_ENV = "G2I_COHORT_CACHE"


def default_cache_root() -> Path:
    """``$G2I_COHORT_CACHE``, else ``$XDG_CACHE_HOME/g2i-fed/cohorts`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(xdg).expanduser() / "g2i-fed" / "cohorts").resolve()


def cohort_key(cfg: CohortConfig, seed: int) -> str:
    """12 hex digits of the cohort config and seed: one cache folder per cohort."""
    blob = json.dumps({"config": asdict(cfg), "seed": int(seed)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cohort_for_partitions(cfg: CohortConfig, num_partitions: int) -> CohortConfig:
    """The cohort config with at least ``num_partitions`` sites, one process per site."""
    return replace(cfg, n_sites=max(cfg.n_sites, int(num_partitions)), workers=1)


@contextmanager
def file_lock(path: Path, timeout_s: float = 1800.0) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created), waiting at most ``timeout_s``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: still locked after {timeout_s:.0f} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def partition_ready(site: Path, cfg: CohortConfig, seed: int) -> bool:
    """True when ``site`` holds a finished partition of this cohort config and seed."""
    marker = site / "site.json"
    if not marker.exists():
        return False
    done = json.loads(marker.read_text())
    return done.get("config") == asdict(cfg) and done.get("seed") == int(seed)


def ensure_partition(
    cfg: CohortConfig, seed: int, partition_id: int, cache_root: Path | None = None
) -> Path:
    """The absolute folder ``<cache>/<key>/site-<partition_id>``, generated if absent.

    ``cfg`` must already have enough sites (``cohort_for_partitions``). A folder left
    half-written by a crashed node has no ``site.json`` and is written again.
    """
    if not 0 <= partition_id < cfg.n_sites:
        raise ValueError(f"partition-id {partition_id}: the cohort has {cfg.n_sites} sites")
    from simulations.cohort import simulate_cohort, site_dir

    root = (cache_root or default_cache_root()) / cohort_key(cfg, seed)
    site = site_dir(root, partition_id).resolve()
    if partition_ready(site, cfg, seed):
        return site
    with file_lock(root / f".site-{partition_id}.lock"):
        if not partition_ready(site, cfg, seed):
            simulate_cohort(cfg, root, seed=seed, sites=[partition_id])
    return site
