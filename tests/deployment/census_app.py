"""A census-only ServerApp for the deployment test.

The product's ServerApp trains for minutes; the deployment test needs only proof that the
SuperLink reaches every authenticated SuperNode over TLS and that each site's ClientApp (the
product's own, from the same FAB) finds its data through ``--node-config data-path``. It
reuses the product's node wait and broadcast, then writes ``<run_dir>/census.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from conf import load_config, to_object
from server.server_app import broadcast, wait_for_nodes
from server.strategy import site_name, site_names

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(
        str(context.run_config.get("experiment", "tiny")),
        str(context.run_config.get("overrides", "")),
    )
    fed = to_object(cfg.federation)
    nodes = wait_for_nodes(grid, fed.min_sites)
    replies, failed = broadcast(grid, nodes, "census", timeout=300)
    report = {
        "sites": {
            str(content["site"]["name"]): {k: int(v) for k, v in content["census"].items()}
            for content in replies.values()
        },
        "failed": {site_name(site_names(grid), n): reason for n, reason in failed.items()},
    }
    out = Path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "census.json").write_text(json.dumps(report, indent=2) + "\n")
