"""Run the app with `flwr run .` (Flower's Simulation Engine) from a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def stop_local_superlink(flwr_home: Path) -> None:
    # `flwr run` leaves its local SuperLink running; stop the one this test started.
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if str(flwr_home) in cmd and ("flower-superlink" in cmd or "flower-superexec" in cmd):
            try:
                os.kill(int(proc.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


def flwr_run(
    flwr_home: Path, run_config: str, num_nodes: int, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """`flwr run . --stream` with a private FLWR_HOME; the local SuperLink is stopped after."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    try:
        return subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                ".",
                "--stream",
                "--run-config",
                run_config,
                "--federation-config",
                f"num-supernodes={num_nodes} client-resources-num-cpus=1",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        stop_local_superlink(flwr_home)
