"""Where a site's data lives: node config in deployment, partition ID in simulation."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conf.schema import CohortConfig

log = logging.getLogger("g2i_fed.site")


class SiteDataMissing(FileNotFoundError):
    """A deployed SuperNode's ``data-path`` names no folder."""


def site_data_path(node_config: Mapping[str, Any], data_root: str) -> Path:
    """The site folder of this node.

    A deployed SuperNode is started with ``--node-config 'data-path="/data/site-a"'``; in
    simulation each node has a ``partition-id`` that names ``<data_root>/site-<id>``.
    """
    if "data-path" in node_config:
        path = Path(str(node_config["data-path"])).expanduser()
        if not path.is_dir():
            raise SiteDataMissing(
                f"data-path {path} is not a folder on this SuperNode; start it with "
                "--node-config 'data-path=\"/path/to/site\"' naming the site's data folder "
                "(clinical.csv, genotypes.*, mri/)"
            )
        return path
    if "partition-id" in node_config:
        return Path(data_root) / f"site-{int(node_config['partition-id'])}"
    raise KeyError(
        "this node has no 'data-path' in its node config; start the SuperNode with "
        "--node-config 'data-path=\"/path/to/site\"'"
    )


def simulated_site_path(
    node_config: Mapping[str, Any], data_root: str, cohort: CohortConfig, seed: int
) -> Path:
    """A simulated node's site folder, absolute: ``<data_root>/site-<id>`` when it holds a
    site, otherwise this node's partition of the synthetic cohort (``cohort`` with at least
    ``num-partitions`` sites, ``seed``), generated once into the cohort cache."""
    from simulations.partition import cohort_for_partitions, ensure_partition

    path = site_data_path(node_config, data_root).expanduser().resolve()
    if (path / "clinical.csv").exists():
        return path
    partition = int(node_config["partition-id"])
    n = int(node_config.get("num-partitions", partition + 1))
    cfg = cohort_for_partitions(cohort, max(n, partition + 1))
    site = ensure_partition(cfg, seed, partition)
    log.info("site-%d: %s has no site data; using the synthetic partition %s", partition,
             path, site)
    return site


def site_threads(node_config: Mapping[str, Any], cpus: int | None = None) -> int:
    """Torch threads for this node: ``num-threads`` from the node config, else its CPU share.

    A simulated node gets its CPUs from Ray (``client-resources-num-cpus``, read from the
    actor's assigned resources), else ``cpus // num-partitions``; torch's default (every
    core) would make the nodes sharing a machine oversubscribe it. A deployed node without
    ``num-threads`` uses all of ``cpus``.
    """
    cpus = cpus or os.cpu_count() or 1
    if "num-threads" in node_config:
        return max(1, int(node_config["num-threads"]))
    if "data-path" in node_config or "partition-id" not in node_config:
        return cpus
    assigned = _ray_cpus()
    if assigned:
        return max(1, int(assigned))
    return max(1, cpus // max(1, int(node_config.get("num-partitions", 1))))


def _ray_cpus() -> float:
    """The CPUs Ray assigned to this worker, 0 outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return 0.0
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:  # no Ray, or not inside a worker: fall back on the partition share
        return 0.0


def set_site_threads(node_config: Mapping[str, Any]) -> int:
    """Apply ``site_threads`` to torch (once per process is enough; cheap to repeat)."""
    import torch

    n = site_threads(node_config)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
