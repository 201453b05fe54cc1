"""Messages as the apps see them, built with explicit metadata (no Flower process globals)."""

from __future__ import annotations

import time
from itertools import count

from flwr.app import Context, Message, Metadata, RecordDict

_IDS = count(1)


def sent(
    node: int, message_type: str, content: RecordDict | None = None, run_id: int = 7
) -> Message:
    """A message from the server to ``node``, with the message ID the grid would give it."""
    metadata = Metadata(
        run_id=run_id,
        message_id=f"m{next(_IDS)}",
        src_node_id=1,
        dst_node_id=node,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600,
        message_type=message_type,
    )
    return Message(content or RecordDict(), metadata=metadata)


def context(node_config: dict, run_config: dict, run_id: int = 7, node: int = 5) -> Context:
    return Context(
        run_id=run_id, node_id=node, node_config=node_config, state=RecordDict(),
        run_config=run_config,
    )
