"""ClientApp: turns the server's messages into calls of the site's data pipeline."""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import site_data_path
from conf import load_config
from preprocessing.census import site_census

app = ClientApp()


@app.query("census")
def census(msg: Message, context: Context) -> Message:
    """Reply with the site's aggregate counts (subjects per diagnosis, scans, genotypes)."""
    cfg = load_config(str(context.run_config["experiment"]), str(context.run_config["overrides"]))
    counts = site_census(site_data_path(context.node_config, cfg.data.root))
    return Message(RecordDict({"census": MetricRecord(counts)}), reply_to=msg)
