"""A census-only ServerApp for the deployment test.

The product's ServerApp trains for minutes; most deployment tests need only proof that the
SuperLink reaches every authenticated SuperNode over TLS and that each site's ClientApp (the
product's own, from the same FAB) finds its data through ``--node-config data-path``. It
reuses the product's ``Federation`` (node wait, messages, failures by site name), then writes
``<run_dir>/census.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from conf import load_config
from contract.messages import CensusReply, Query
from server.phases import Federation, wait_for_nodes
from server.report import failures_by_site
from server.run_state import RunState
from server.strategy import site_names

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(
        str(context.run_config.get("experiment", "tiny")),
        str(context.run_config.get("overrides", "")),
    )
    fed = Federation(grid, cfg, RunState(cfg.run_dir))
    fed.active = wait_for_nodes(grid, int(cfg.federation.min_sites))
    fed.names = site_names(grid)
    replies = {n: CensusReply.from_record(c) for n, c in fed.ask(Query.CENSUS).items()}
    report = {
        "sites": {fed.names.get(n, r.site): dict(r.counts) for n, r in replies.items()},
        "failed": failures_by_site(fed.run.round_logs()),
    }
    out = Path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "census.json").write_text(json.dumps(report, indent=2) + "\n")
