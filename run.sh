#!/usr/bin/env bash
# Quick start: set up a virtual environment, generate the synthetic 3-site cohort and run the
# federation with Flower's Simulation Engine (`flwr run .`) on the CPU. Prints the time of
# every step and phase at the end, stops the SuperLink `flwr run` started, and exits
# non-zero when the run failed.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
T0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - T0 ))" >> "$TIMES"; }
TIMES=$(mktemp)
stamp start

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# The CPU build of torch first, so nothing pulls a CUDA build.
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e "$ROOT[test]"
stamp install

export PATH="$VENV/bin:$PATH"
export FLWR_HOME=${FLWR_HOME:-$ROOT/.flwr}
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
mkdir -p "$FLWR_HOME"
# `flwr run .` starts a local SuperLink that outlives it: stop it however this script ends.
trap 'python -c "import sys; from pathlib import Path; from studies.federation import \
stop_local_superlink; stop_local_superlink(Path(sys.argv[1]))" "$FLWR_HOME"; rm -f "$TIMES"' EXIT

DATA=${DATA:-$ROOT/data/cohort}
RUN_DIR=${RUN_DIR:-$ROOT/runs/fed_tiny}
g2i-simulate output_dir="$DATA" seed=0
stamp cohort

# A finished run folder is resumed (nothing left to do); start afresh for a new run.
rm -rf "$RUN_DIR"
# Every site trains at once, each with its share of the cores (at least one thread): Ray is
# told there are NODES x PER CPUs, so on 2 cores the three sites share them instead of two
# training while the third waits (measured on 2 cores: a round took 2.4x one site's compute
# with two sites at a time, 1.7x with all three).
NODES=3
PER=$(( $(nproc) / NODES )); [ "$PER" -ge 1 ] || PER=1
flwr run . --stream \
  --run-config "experiment='fed_tiny' overrides='data.root=$DATA run_dir=$RUN_DIR federation.min_sites=$NODES'" \
  --federation-config "num-supernodes=$NODES client-resources-num-cpus=$PER init-args-num-cpus=$(( PER * NODES ))"
stamp federation

if [ -f "$RUN_DIR/synthetic/images.npz" ]; then
  python scripts/real_vs_synthetic.py "$RUN_DIR" "$DATA"/prepared/site-*/prepared
fi
stamp grid

# `flwr run` exits 0 even when the run failed: check what the run left behind.
python - "$RUN_DIR" "$TIMES" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
metrics = run / "metrics.json"
if not metrics.exists():
    sys.exit(f"RUN FAILED: {metrics} was not written (see the log above)")
m = json.loads(metrics.read_text())
if m["failures"] or len(m["sites"]) < 3:
    sys.exit(f"RUN FAILED: failing sites: {m['failures']}")
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
steps = [line.split() for line in Path(sys.argv[2]).read_text().splitlines()]
print("time per step (s):")
for (_, t0), (name, t1) in zip(steps, steps[1:]):
    print(f"  {name:<24} {int(t1) - int(t0):5d}")
for phase, s in m.get("timings_s", {}).items():
    print(f"    federation: {phase:<22} {s:7.1f}")
print(f"  total                    {int(steps[-1][1]):5d}")
print(f"run folder: {run}\n  model: {run / 'model'}\n  synthetic grid: {run / 'synthetic' / 'grid.png'}"
      f"\n  real vs synthetic: {run / 'real_vs_synthetic.png'}\n  metrics: {metrics}")
print(f"next: g2i-evaluate experiment=fed_tiny run_dir={run} (image metrics, APOE e4 effect)")
PY
