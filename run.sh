#!/usr/bin/env bash
# Quick start: set up a virtual environment, generate the synthetic 3-site cohort and run the
# federation with Flower's Simulation Engine (`flwr run .`) on the CPU.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# The CPU build of torch first, so nothing pulls a CUDA build.
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e "$ROOT[test]"

export PATH="$VENV/bin:$PATH"
export FLWR_HOME=${FLWR_HOME:-$ROOT/.flwr}
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
mkdir -p "$FLWR_HOME"

DATA=${DATA:-$ROOT/data/cohort}
RUN_DIR=${RUN_DIR:-$ROOT/runs/fed_tiny}
g2i-simulate output_dir="$DATA" seed=0

# A finished run folder is resumed (nothing left to do); start afresh for a new run.
rm -rf "$RUN_DIR"
flwr run . --stream \
  --run-config "experiment='fed_tiny' overrides='data.root=$DATA run_dir=$RUN_DIR federation.min_sites=3'" \
  --federation-config "num-supernodes=3 client-resources-num-cpus=1"

# `flwr run` exits 0 even when the run failed: check what the run left behind.
python - "$RUN_DIR" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
metrics = run / "metrics.json"
if not metrics.exists():
    sys.exit(f"run failed: {metrics} was not written (see the log above)")
m = json.loads(metrics.read_text())
if m["failures"] or len(m["sites"]) < 3:
    sys.exit(f"run finished with failing sites: {m['failures']}")
ae = m["last_round_site_metrics"]["ae"]
print(f"federation OK: sites {m['sites']}, {m['rounds']} rounds, latent scale "
      f"{m['latent_scale_factor']:.3f}")
for site, s in sorted(ae.items()):
    print(f"  {site}: autoencoder val PSNR {s.get('val-psnr', float('nan')):.2f} dB")
down = m.get("downstream", {}).get("across_sites", {})
if down:
    acc = {arm: down[arm]["accuracy"]["mean"] for arm in ("real", "augmented")}
    print(f"  site classifiers (CN/MCI/AD, own test split): accuracy {acc['real']:.3f} real, "
          f"{acc['augmented']:.3f} real + synthetic (mean over sites)")
print(f"model: {run / 'model'}; synthetic set: {run / 'synthetic'}; plots: {run / 'rounds.png'}")
print(f"next: g2i-evaluate experiment=fed_tiny run_dir={run} (image metrics, APOE e4 effect)")
PY
