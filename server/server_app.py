"""ServerApp: asks every site for its aggregate counts and writes the federation census.

The training phases (federated QC, autoencoder, LDM) build on this wiring.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from conf import load_config

app = ServerApp()


def wait_for_nodes(grid: Grid, min_nodes: int, timeout_s: float = 120.0) -> list[int]:
    """Node IDs once at least ``min_nodes`` SuperNodes are connected."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= min_nodes:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {min_nodes} sites connected in {timeout_s} s")
        time.sleep(1.0)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(str(context.run_config["experiment"]), str(context.run_config["overrides"]))
    nodes = wait_for_nodes(grid, cfg.federation.min_sites)
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type="query.census") for node in nodes
    ]
    sites, failed = {}, {}
    for reply in grid.send_and_receive(messages, timeout=300):
        node = reply.metadata.src_node_id
        if reply.has_error():
            failed[str(node)] = reply.error.reason.strip().splitlines()[-1][:500]
            continue
        sites[str(node)] = dict(reply.content["census"])
    totals = {k: sum(int(s[k]) for s in sites.values()) for k in next(iter(sites.values()), {})}
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = {"sites": sites, "failed": failed, "totals": totals}
    (run_dir / "census.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"census of {len(sites)} sites ({len(failed)} failed): {totals}")
    if len(sites) < cfg.federation.min_sites:
        raise RuntimeError(f"only {len(sites)} sites answered; {cfg.federation.min_sites} needed")
