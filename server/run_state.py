"""The server's run folder: checkpoints every round, a round log, and resume.

RUN/state.json           phase progress (rounds done per phase, scale factor, panel)
RUN/checkpoints/<phase>.npz  global weights after the last finished round of a phase
RUN/checkpoints/<phase>.strategy.npz  the server optimiser's state (FedAdam / FedYogi /
                         FedAdagrad moments, FedAvgM momentum) saved with those weights
RUN/rounds.jsonl         one line per round: per-site metrics and failures
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvgM

from server.strategy import RoundLog

# Server-side optimiser state of Flower's strategies: attribute -> kind.
_STATE_DICTS = ("m_t", "v_t")  # FedOpt family: dicts of arrays by parameter name
_STATE_LISTS = ("momentum_vector",)  # FedAvgM: a list of arrays in parameter order


def strategy_state(strategy: object) -> dict[str, np.ndarray]:
    """The inner strategy's optimiser state as named arrays (empty for stateless ones);
    ``strategy`` may be wrapped (``.inner`` / ``.strategy``)."""
    s = _innermost(strategy)
    out: dict[str, np.ndarray] = {}
    for attr in _STATE_DICTS:
        for k, v in (getattr(s, attr, None) or {}).items():
            out[f"{attr}/{k}"] = np.asarray(v)
    for attr in _STATE_LISTS:
        for i, v in enumerate(getattr(s, attr, None) or []):
            out[f"{attr}/{i:06d}"] = np.asarray(v)
    return out


def restore_strategy_state(
    strategy: object, state: dict[str, np.ndarray], arrays: dict[str, np.ndarray]
) -> None:
    """Put saved optimiser state (``strategy_state``) and the current global weights back."""
    s = _innermost(strategy)
    if not state:
        return
    for attr in _STATE_DICTS:
        part = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{attr}/")}
        if part and hasattr(s, attr):
            setattr(s, attr, part)
    for attr in _STATE_LISTS:
        part = [v for k, v in sorted(state.items()) if k.startswith(f"{attr}/")]
        if part and hasattr(s, attr):
            setattr(s, attr, part)
    if isinstance(s, FedAvgM):
        s.current_arrays = ArrayRecord(
            array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
        )
    elif hasattr(s, "current_arrays"):  # the FedOpt family keeps numpy arrays by name
        s.current_arrays = dict(arrays)


def _innermost(strategy: object) -> object:
    while True:
        nxt = getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
        if nxt is None:
            return strategy
        strategy = nxt


class RunState:
    """Progress of one federated run, persisted after every change."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "checkpoints").mkdir(exist_ok=True)
        path = self.dir / "state.json"
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def _save(self) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.dir / "state.json")

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)

    def set(self, **values: Any) -> None:
        self.state.update(values)
        self._save()

    def rounds_done(self, phase: str) -> int:
        return int(self.state.get(f"{phase}_rounds_done", 0))

    def checkpoint(
        self,
        phase: str,
        round_done: int,
        arrays: dict[str, np.ndarray],
        strategy: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Weights and optimiser state first, then the state that points at them (a crash in
        between is safe)."""
        for name, values in ((phase, arrays), (f"{phase}.strategy", strategy or {})):
            tmp = self.dir / "checkpoints" / f"{name}.tmp.npz"
            np.savez(tmp, **values)
            tmp.replace(self.dir / "checkpoints" / f"{name}.npz")
        self.set(**{f"{phase}_rounds_done": round_done})

    def load_strategy_state(self, phase: str) -> dict[str, np.ndarray]:
        path = self.dir / "checkpoints" / f"{phase}.strategy.npz"
        if not path.exists() or self.rounds_done(phase) == 0:
            return {}
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def invalidate(self, phase: str, *keys: str) -> None:
        """Forget a phase's progress (its weights no longer match what it was trained on)
        and derived values such as the latent scale."""
        for name in (phase, f"{phase}.strategy"):
            (self.dir / "checkpoints" / f"{name}.npz").unlink(missing_ok=True)
        for key in (f"{phase}_rounds_done", *keys):
            self.state.pop(key, None)
        self._save()

    def load_checkpoint(self, phase: str) -> dict[str, np.ndarray] | None:
        path = self.dir / "checkpoints" / f"{phase}.npz"
        if not path.exists() or self.rounds_done(phase) == 0:
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def log_round(self, log: RoundLog) -> None:
        with open(self.dir / "rounds.jsonl", "a") as fh:
            fh.write(json.dumps(asdict(log)) + "\n")

    def round_logs(self) -> list[dict[str, Any]]:
        path = self.dir / "rounds.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
