"""Where a site's data lives: node config in deployment, partition ID in simulation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def site_data_path(node_config: Mapping[str, Any], data_root: str) -> Path:
    """The site folder of this node.

    A deployed SuperNode is started with ``--node-config 'data-path="/data/site-a"'``; in
    simulation each node has a ``partition-id`` that names ``<data_root>/site-<id>``.
    """
    if "data-path" in node_config:
        return Path(str(node_config["data-path"]))
    if "partition-id" in node_config:
        return Path(data_root) / f"site-{int(node_config['partition-id'])}"
    raise KeyError(
        "this node has no 'data-path' in its node config; start the SuperNode with "
        "--node-config 'data-path=\"/path/to/site\"'"
    )
