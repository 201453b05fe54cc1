"""An audit log of everything a site sends: record names, array shapes and dtypes, metric and
config values. A hospital can read exactly what left it; the privacy tests read it too."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message

from client.policy import is_simulation


def describe_reply(msg: Message) -> dict[str, Any]:
    """JSON-able description of a reply's content (no array values)."""
    content = None if msg.has_error() else msg.content
    return {
        "time": time.time(),
        "message_type": msg.metadata.message_type,
        "error": msg.error.reason[-300:] if msg.has_error() else None,
        "arrays": {
            name: {k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in rec.items()}
            for name, rec in (content.array_records.items() if not msg.has_error() else [])
        },
        "metrics": {
            name: dict(rec)
            for name, rec in (content.metric_records.items() if not msg.has_error() else [])
        },
        "configs": {
            name: dict(rec)
            for name, rec in (content.config_records.items() if not msg.has_error() else [])
        },
    }


def audit_mod(msg: Message, ctxt: Context, call_next) -> Message:  # noqa: ANN001
    """With node config ``audit-path`` (in simulation run config ``audit-dir``) set, append
    every reply's description to ``<dir>/<node>.jsonl``."""
    reply = call_next(msg, ctxt)
    # Where a deployed site writes is its own choice: the run config's audit-dir counts only
    # in simulation, whose operator is every site.
    folder = str(ctxt.node_config.get("audit-path", ""))
    if not folder and is_simulation(dict(ctxt.node_config)):
        folder = str(ctxt.run_config.get("audit-dir", ""))
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        node = ctxt.node_config.get("partition-id", ctxt.node_id)
        with open(Path(folder) / f"node-{node}.jsonl", "a") as fh:
            fh.write(json.dumps(describe_reply(reply), default=str) + "\n")
    return reply
