"""`flwr run .` with Flower's Simulation Engine: three simulated sites answer the census."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


def _stop_local_superlink(flwr_home: Path) -> None:
    # `flwr run` leaves its local SuperLink running; stop the one this test started.
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if str(flwr_home) in cmd and "flower-superlink" in cmd:
            os.kill(int(proc.name), signal.SIGTERM)


@pytest.mark.skipif(
    shutil.which("flwr", path=str(Path(sys.executable).parent)) is None,
    reason="the flwr CLI is not installed beside this Python",
)
def test_flwr_run_census_over_three_sites(cohort_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    flwr_home = tmp_path / "flwr"
    flwr_home.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    overrides = f"data.root={cohort_dir} run_dir={run_dir} federation.min_sites=3"
    try:
        proc = subprocess.run(
            [
                "flwr",
                "run",
                ".",
                "--stream",
                "--run-config",
                f"experiment='tiny' overrides='{overrides}'",
                "--federation-config",
                "num-supernodes=3 client-resources-num-cpus=1",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        _stop_local_superlink(flwr_home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((run_dir / "census.json").read_text())
    assert report["failed"] == {}
    assert sorted(s["n-subjects"] for s in report["sites"].values()) == [40, 48, 52]
    assert report["totals"]["n-complete"] == 140
    # Only aggregate counts came back: no subject ID appears in what the server stored.
    text = (run_dir / "census.json").read_text()
    assert "_S_" not in text
