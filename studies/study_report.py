"""The study's table (the shapes of the paper's Tables 1 and 2, plus our columns), summary plot
and Markdown report. Input: ``results`` as ``studies.study.run_study`` builds it, one
entry per cell with "variant", "mode", "privacy", "training", "evaluation" (or "error").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The paper's names of the variants (its Tables 1 and 2).
PAPER_NAMES = {
    "ldm_label": "LDM (label)",
    "g2i": "G2I",
    "g2i_label_noattn": "G2I-l",
    "g2i_label_attn": "G2I-l w/ Att.",
}


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def _mean_sd(stat: Any, scale: float = 100.0) -> str:
    """Mean +- SD of a {"mean", "sd"} entry, in percent."""
    if not isinstance(stat, dict) or "mean" not in stat:
        return "-"
    return f"{scale * float(stat['mean']):.2f} ± {scale * float(stat.get('sd', 0.0)):.2f}"


def epsilon_of(entry: dict[str, Any]) -> float | None:
    """The epsilon a DP cell spent: the centralized accountant's, or the largest site's."""
    if entry.get("privacy") == "none":
        return None
    training = entry.get("training", {})
    eps = _get(training, "metrics", "dp_epsilon")
    if eps is not None:
        return float(eps)
    # The federation's ledger: one row per site and round; epsilon accumulates over rounds.
    values = [
        float(r["epsilon"])
        for r in training.get("privacy_ledger") or []
        if r.get("epsilon") not in (None, "")
    ]
    return max(values) if values else None


def cell_row(entry: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one cell, flat."""
    ev = entry.get("evaluation", {})
    img = ev.get("image", {})
    eff = ev.get("effect", {})
    mem = ev.get("memorisation", {})
    return {
        "model": PAPER_NAMES.get(entry["variant"], entry["variant"]),
        "mode": entry["mode"],
        "dp": entry["privacy"],
        "psnr": _get(img, "against_real", "psnr"),
        "fid": _get(img, "fid_kid", "fid"),
        "kid": _get(img, "fid_kid", "kid_mean"),
        "ms_ssim": _get(img, "diversity", "ms_ssim"),
        "ssim": _get(img, "diversity", "ssim"),
        "effect_ratio": eff.get("ratio"),
        "effect_ci": (eff.get("ratio_ci_low"), eff.get("ratio_ci_high")),
        "memorised": _get(mem, "pixel", "fraction_flagged"),
        "epsilon": epsilon_of(entry),
        "wall_s": _get(entry, "training", "train_wall_s"),
        "real": _get(ev, "downstream", "real"),
        "augmented": _get(ev, "downstream", "augmented"),
        "synthetic": _get(ev, "downstream", "synthetic"),
        "extractor": ev.get("feature_extractor"),
        "error": entry.get("error"),
    }


def table_markdown(results: dict[str, Any]) -> str:
    """Table 1 (image quality + our columns) and Table 2 (downstream) as Markdown."""
    rows = [cell_row(e) for e in results.values()]
    extractors = sorted({r["extractor"] for r in rows if r["extractor"]})
    lines = [
        "### Image quality (the paper's Table 1, plus our columns)",
        "",
        "PSNR: generated vs a real test image of the same diagnosis. MS-SSIM / SSIM: between "
        "pairs of generated images (the paper's use; lower = more diverse). FID / KID "
        f"features: {', '.join(extractors) or '-'}. Effect ratio: generated / true APOE e4 "
        "slope of ventricle area [95% CI]. Memorised: share of synthetic images closer to a "
        "training image than the audit threshold (pixels).",
        "",
        "| Model | Mode | DP | PSNR ↑ | FID ↓ | MS-SSIM ↓ | SSIM ↓ | KID ↓ | e4 effect ratio "
        "| Memorised | ε | Train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["error"]:
            lines.append(
                f"| {r['model']} | {r['mode']} | {r['dp']} | failed: {r['error'][:80]} "
                "| | | | | | | | |"
            )
            continue
        lo, hi = r["effect_ci"]
        effect = (
            f"{_num(r['effect_ratio'], 2)} [{_num(lo, 2)}, {_num(hi, 2)}]"
            if r["effect_ratio"] is not None
            else "-"
        )
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['dp']} | {_num(r['psnr'], 2)} "
            f"| {_num(r['fid'], 2)} | {_num(r['ms_ssim'])} | {_num(r['ssim'])} "
            f"| {_num(r['kid'], 4)} | {effect} | {_num(r['memorised'], 3)} "
            f"| {_num(r['epsilon'], 2)} | {_num(r['wall_s'], 0)} |"
        )
    lines += [
        "",
        "### Downstream CN / MCI / AD classification (the paper's Table 2), mean ± SD over "
        "seeds, %",
        "",
        "| Training images | Mode | DP | Accuracy | Macro-precision | Macro-recall | Macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    real = next((r["real"] for r in rows if r["real"]), None)
    if real:
        lines.append(_downstream_line("Original images", "-", "-", real))
    for r in rows:
        if r["augmented"]:
            lines.append(_downstream_line(f"+ {r['model']}", r["mode"], r["dp"], r["augmented"]))
    for r in rows:
        if r["synthetic"]:
            name = f"{r['model']} alone (synthetic only)"
            lines.append(_downstream_line(name, r["mode"], r["dp"], r["synthetic"]))
    return "\n".join(lines) + "\n"


def _downstream_line(name: str, mode: str, dp: str, arm: dict[str, Any]) -> str:
    keys = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
    cols = [_mean_sd(arm.get(k)) for k in keys]
    return f"| {name} | {mode} | {dp} | " + " | ".join(cols) + " |"


def summary_markdown(summary: dict[str, dict[str, Any]]) -> str:
    """The headline numbers of every cell (``results.json``'s ``summary``) as one table."""
    lines = [
        "### Headline numbers (results.json `summary`)",
        "",
        "e4 ratio: generated / true APOE e4 slope of ventricle area, paired over sampling seeds "
        "[95% CI]; vs real: the same generated slope over the real images' slope within "
        "diagnoses (what a diagnosis-conditioned model should reproduce); vs ideal: the e4 ratio "
        "over the one a perfect generator reaches on this cohort at a fixed diagnosis "
        "(`attainable_e4_effect`); as read: the same over what a perfect generator shows "
        "through the morphometry (that ideal times the measurement's calibration); steps: "
        "generated 0->1 and 1->2 differences (mm²). Ventricle area per "
        "diagnosis: generated (real test images). Gain: augmented - real accuracy, paired over "
        "classifier seeds [95% CI]; Synth only: accuracy of the classifier trained on the "
        "synthetic images alone (tested on the real ones). Shuffle: held-out MSE rise when "
        "e4 / the diagnosis is shuffled (x 1e-5).",
        "",
        "| Cell | e4 ratio [CI] | vs real | vs ideal | as read | steps 0->1 / 1->2 | FID "
        "| CN / MCI / AD area, mm² | Acc real -> aug | Gain [CI] | Synth only | Memorised "
        "| Shuffle e4 / DX | Train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, c in summary.items():
        ci = c.get("e4_ci") or [None, None]
        ratio = "-" if c.get("e4_ratio") is None else (
            f"{_num(c['e4_ratio'], 2)} [{_num(ci[0], 2)}, {_num(ci[1], 2)}]"
        )
        st = c.get("e4_steps") or {}
        steps = f"{_num(st.get('0->1'), 0)} / {_num(st.get('1->2'), 0)}" if st else "-"
        gen, real = c.get("dx_area_mm2") or {}, c.get("dx_area_mm2_real") or {}
        areas = " / ".join(
            f"{_num(gen.get(d), 0)} ({_num(real.get(d), 0)})" for d in ("CN", "MCI", "AD")
        )
        g = c.get("gain_ci") or [None, None]
        pct = (lambda v: "-" if v is None else f"{100 * float(v):.1f}")  # noqa: E731
        use = c.get("condition_use") or {}
        shuffle = " / ".join(
            "-" if use.get(k) is None else f"{1e5 * float(use[k]):.1f}"
            for k in ("shuffle_e4", "shuffle_dx")
        )
        lines.append(
            f"| {key} | {ratio} | {_num(c.get('e4_ratio_real_within_dx'), 2)} "
            f"| {_num(c.get('e4_ratio_vs_attainable'), 2)} "
            f"| {_num(c.get('e4_ratio_vs_attainable_measured'), 2)} | {steps} "
            f"| {_num(c.get('fid'), 1)} | {areas} "
            f"| {pct(c.get('accuracy_real'))} -> {pct(c.get('accuracy_augmented'))} "
            f"| [{pct(g[0])}, {pct(g[1])}] | {pct(c.get('accuracy_synthetic_only'))} "
            f"| {_num(c.get('memorised'), 3)} | {shuffle} "
            f"| {_num(c.get('train_wall_s'), 0)} |"
        )
    return "\n".join(lines) + "\n"


def write_table(
    results: dict[str, Any], path: Path, summary: dict[str, dict[str, Any]] | None = None
) -> None:
    head = summary_markdown(summary) + "\n" if summary else ""
    path.write_text(head + table_markdown(results))


def write_summary_plot(results: dict[str, Any], path: Path) -> None:
    """FID, e4 effect ratio and augmented accuracy per cell, side by side."""
    rows = [cell_row(e) for e in results.values() if "error" not in e]
    if not rows:
        return
    labels = [f"{r['model']}\n{r['mode'][:4]}/{r['dp']}" for r in rows]
    panels = [
        ("FID ↓", [r["fid"] for r in rows]),
        ("e4 effect ratio (1 = truth)", [r["effect_ratio"] for r in rows]),
        ("accuracy, real + synthetic", [_get(r["augmented"], "accuracy", "mean") for r in rows]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(max(10, 1.1 * len(rows) * 3), 4.5))
    colours = ["#4878d0" if r["dp"] == "none" else "#ee854a" for r in rows]
    for ax, (title, values) in zip(axes, panels, strict=True):
        y = [float("nan") if v is None else float(v) for v in values]
        ax.bar(range(len(y)), y, color=colours)
        ax.set_title(title)
        ax.set_xticks(range(len(y)), labels, rotation=90, fontsize=7)
    axes[1].axhline(1.0, color="k", lw=0.8, ls="--")
    real_acc = next((_get(r["real"], "accuracy", "mean") for r in rows if r["real"]), None)
    if real_acc is not None:
        axes[2].axhline(float(real_acc), color="k", lw=0.8, ls="--", label="real only")
        axes[2].legend(fontsize=7)
    fig.suptitle("G2I-Fed study (blue: no DP, orange: DP)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], cfg: Any, out: Path) -> Path:
    """``out/report.md``: setup, tables, summary plot, and per cell its figures, loss curves
    and privacy ledger."""
    lines = [
        "# G2I-Fed study report",
        "",
        f"Cohort: `{cfg.data_root}`; preset experiment `{cfg.study.experiment}`; "
        f"{cfg.study.n_sites} sites; seed {cfg.seed}.",
        "",
        "Cell overrides: `"
        + " ".join(cfg.study.overrides)
        + "`; DP cells add `"
        + " ".join(cfg.study.dp_overrides)
        + "`.",
        "",
        table_markdown(results),
        "![summary](summary.png)",
        "",
    ]
    for name, entry in results.items():
        cell = Path("cells") / name
        lines += [f"## {name}", ""]
        if "error" in entry:
            lines += [f"Failed: `{entry['error']}`", ""]
            continue
        ev = entry.get("evaluation", {})
        eff = ev.get("effect", {})
        if "ratio" in eff:
            lines.append(
                f"APOE e4 effect on ventricle area: generated {_num(eff.get('slope'), 2)} "
                f"mm²/copy vs true {_num(eff.get('true_slope'), 2)} "
                f"(ratio {_num(eff['ratio'], 2)})."
            )
        figures = [
            ("generated samples", cell / "evaluation" / "samples.png"),
            (
                "group-mean differences, generated",
                cell / "evaluation" / "differences_generated.png",
            ),
            ("group-mean differences, real", cell / "evaluation" / "differences_real.png"),
            ("APOE e4 0 / 1 / 2", cell / "evaluation" / "apoe_effect.png"),
            ("federated rounds", cell / "rounds.png"),
            ("autoencoder loss", cell / "ae_loss.png"),
            ("LDM loss", cell / "ldm_loss.png"),
        ]
        for title, rel in figures:
            if (out / rel).is_file():
                lines += [f"![{title}]({rel.as_posix()})", ""]
        ledger = out / cell / "privacy_ledger.csv"
        if ledger.is_file():
            lines += [
                "Privacy ledger (per round):",
                "",
                "```",
                ledger.read_text().strip(),
                "```",
                "",
            ]
        eps = epsilon_of(entry)
        if eps is not None:
            lines += [f"ε spent: {eps:.2f}", ""]
        sites = _get(entry, "training", "site_downstream", "across_sites")
        if sites:
            lines += [
                "At the sites (each trains on its own split, tests on its own held-out images; "
                "mean ± SD across sites, %): accuracy real "
                f"{_mean_sd(_get(sites, 'real', 'accuracy'))}, real + synthetic "
                f"{_mean_sd(_get(sites, 'augmented', 'accuracy'))}; macro-F1 real "
                f"{_mean_sd(_get(sites, 'real', 'macro_f1'))}, real + synthetic "
                f"{_mean_sd(_get(sites, 'augmented', 'macro_f1'))}.",
                "",
            ]
        down = ev.get("downstream")
        if down:
            lines += [
                "Downstream (pooled test split):",
                "",
                "```",
                json.dumps(
                    {k: down[k] for k in down if k in ("real", "augmented", "gain", "counts")},
                    indent=1,
                )[:3000],
                "```",
                "",
            ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
