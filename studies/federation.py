"""Run the G2I-Fed Flower app with Flower's Simulation Engine (``flwr run .``) from Python.

The study driver, the benchmarks and the tests start federations this way: the same
command as the quick start, with a private ``FLWR_HOME`` and private SuperLink ports, so
runs (a study next to a test, two tests) never share a SuperLink.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class FederationError(RuntimeError):
    """A federation did not finish; the message holds the tail of its log."""


def stop_local_superlink(flwr_home: Path) -> None:
    """Stop the local SuperLink that ``flwr run`` started under ``flwr_home`` (it outlives
    the command)."""
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_superlink_env(flwr_home: Path) -> dict[str, str]:
    """Environment for ``flwr run`` whose local SuperLink is this run's own: ports of its own
    (Flower's defaults, 39091 / 39093, are shared by every FLWR_HOME on the machine, so a
    second federation would submit its run to the first one's SuperLink)."""
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }


def flwr_run(
    flwr_home: Path, run_config: str, num_nodes: int, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """``flwr run . --stream`` with ``num_nodes`` simulated SuperNodes (1 CPU each)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = private_superlink_env(flwr_home)
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


def run_federation(
    experiment: str,
    overrides: list[str],
    run_dir: Path,
    num_nodes: int,
    flwr_home: Path,
    timeout: int = 3600,
) -> dict[str, Any]:
    """Run one federation to the end; its metrics.json. The log goes to run_dir/flwr.log.

    Raises FederationError when no metrics.json was written (``flwr run`` exits 0 even when
    the ServerApp failed).
    """
    run_dir = Path(run_dir).resolve()
    items = [o for o in overrides if not o.startswith("run_dir=")]
    quoted = " ".join([*items, f"run_dir={run_dir}"])
    if "'" in quoted:
        raise ValueError(f"overrides must not contain single quotes: {quoted}")
    config = f"experiment='{experiment}' overrides='{quoted}'"
    proc = flwr_run(flwr_home, config, num_nodes, timeout)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "flwr.log").write_text(proc.stdout + proc.stderr)
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise FederationError(f"{run_dir}: the federation wrote no metrics.json\n{tail}")
    return json.loads(metrics.read_text())
