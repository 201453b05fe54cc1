"""ServerApp: census, federated QC, autoencoder rounds, LDM rounds, generation, report.

Phase 0: sites send per-SNP genotype counts; the server derives the keep-list plink1.9 would
give on the pooled cohort and sends it back; sites build their datasets. Phase 1: autoencoder
rounds. Between phases the sites return latent moments and the server sets the scale factor.
Phase 2: SNP encoder + UNet rounds with the autoencoder frozen at the sites (only the trained
parts travel). Then the server generates the synthetic set from the federated per-diagnosis
genotype frequencies and shares it; each site scores it (downstream classifier real vs real +
synthetic, aggregate memorisation audit) and returns summaries only. Every round is
checkpointed with the server optimiser's state; rerunning a run folder resumes it.

With a public stage (``model.pretrained``, made by ``g2i-pretrain``) phase 1 is the public
autoencoder, sent to the sites with its scale (no moments of their data asked), and phase 2
starts from the public denoiser; with ``privacy.trainable=conditioning`` the sites train and
send back only the conditioning path, which the server lays over the global model.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from conf import load_config
from conf.schema import check_config
from contract.messages import Phase
from g2i_models.device import seed_everything
from server.phases import (
    Federation,
    base_round,
    initial_weights,
    public_autoencoder,
    run_census,
    run_federated_qc,
    run_generation,
    run_latent_scale,
    run_prepare,
    run_rounds,
    run_synthetic_evaluation,
    site_evaluations,
    summary_lines,
    timed,
    write_report,
)
from server.run_state import RunState

app = ServerApp()

__all__ = ["app", "main", "site_evaluations"]


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(
        str(context.run_config.get("experiment", "tiny")),
        str(context.run_config.get("overrides", "")),
    )
    check_config(cfg)
    seed_everything(cfg.seed)
    fed = Federation(grid, cfg, RunState(cfg.run_dir))
    t0 = time.monotonic()
    try:
        metrics = run_phases(fed)
    except Exception as exc:
        # `flwr run` exits 0 whatever happens here: the last thing the log says is this.
        print(f"G2I-Fed run FAILED after {time.monotonic() - t0:.0f} s: "
              f"{type(exc).__name__}: {exc}", flush=True)
        raise
    print("\n".join(summary_lines(fed, metrics, time.monotonic() - t0)), flush=True)


def run_phases(fed: Federation) -> dict[str, Any]:
    """The phases in order; returns metrics.json's content."""
    with timed(fed, "census + QC + prepare"):
        run_census(fed)
        prepared = run_prepare(fed, run_federated_qc(fed))
        config = base_round(fed, prepared)
    public_scale = None
    with timed(fed, "autoencoder"):
        if fed.cfg.model.pretrained:
            # The public stage trained it: no autoencoder rounds, nothing of the sites' data.
            ae, public_scale = public_autoencoder(fed)
        else:
            ae = run_rounds(fed, Phase.AE, initial_weights(fed, Phase.AE), config)
    with timed(fed, "latent scale"):
        scale = run_latent_scale(fed, ae, config, known=public_scale)
        config.scale = scale
    with timed(fed, "LDM"):
        ldm = run_rounds(fed, Phase.LDM, initial_weights(fed, Phase.LDM), config)
    with timed(fed, "generation"):
        synthetic = run_generation(fed, ae, ldm, scale)
    with timed(fed, "site evaluation"):
        run_synthetic_evaluation(fed, synthetic)
    return write_report(fed, scale)
