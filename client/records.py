"""The wire format the ServerApp and the ClientApp share: named numpy arrays in an
ArrayRecord, and a one-line summary of an error reply."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named arrays -> ArrayRecord (names kept, C-contiguous)."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays."""
    return {k: v.numpy() for k, v in record.items()}


def message_arrays(msg: Message) -> dict[str, np.ndarray]:
    """The arrays of a message's (first) ArrayRecord."""
    return from_record(next(iter(msg.content.array_records.values())))


def error_summary(msg: Message, limit: int = 400) -> str:
    """The last line of an error reply's reason (the exception), at most ``limit`` characters."""
    return msg.error.reason.strip().splitlines()[-1][:limit]
