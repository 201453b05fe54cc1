"""The server's run folder: checkpoints every round, a round log, and resume.

RUN/state.json           phase progress (rounds done per phase, scale factor, panel)
RUN/checkpoints/<phase>.npz  global weights after the last finished round of a phase
RUN/rounds.jsonl         one line per round: per-site metrics and failures
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from server.strategy import RoundLog


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

    def checkpoint(self, phase: str, round_done: int, arrays: dict[str, np.ndarray]) -> None:
        """Weights first, then the state that points at them (a crash in between is safe)."""
        tmp = self.dir / "checkpoints" / f"{phase}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(self.dir / "checkpoints" / f"{phase}.npz")
        self.set(**{f"{phase}_rounds_done": round_done})

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
