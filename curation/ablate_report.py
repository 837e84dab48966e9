"""The ablation's comparison report: one table, one plot, the best variant's recipe.

``OUT/report/index.html`` (per variant: funnel, kept fraction, clean figures, zero-shot
top-1 with its seed spread, warnings), ``OUT/report/accuracy_vs_kept.png`` and
``OUT/best_recipe.yaml`` with the figures it was chosen by in a comment at its top.
"""

from __future__ import annotations

import html
from pathlib import Path

import yaml


def write_report(report: dict, out: Path) -> None:
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    _plot(report, folder / "accuracy_vs_kept.png")
    (folder / "index.html").write_text(_html(report), encoding="utf-8")
    best = report["variants"][report["best"]]
    if best["recipe"] is not None:
        (out / "best_recipe.yaml").write_text(_recipe_text(report, best), encoding="utf-8")


def summary_table(report: dict) -> str:
    """Plain-text table of the variants, for the terminal."""
    lines = [f"{'variant':<24}{'kept':>8}{'kept %':>8}{'clean kept':>11}{'mismatch rm':>12}"
             f"{'noise rm':>10}{'top-1':>8}{'spread':>8}"]
    for name, v in report["variants"].items():
        truth = v.get("truth") or {}
        lines.append(f"{name:<24}{v['kept']:>8}{_pct(v.get('kept_fraction')):>8}{_pct(truth.get('clean_kept')):>11}"
                     f"{_pct(truth.get('mismatch_removed')):>12}{_pct(truth.get('noise_removed')):>10}"
                     f"{v['zeroshot_top1']:>8.4f}{v['seed_spread']:>8.4f}")
    lines.append(f"best: {report['best']}")
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in report["variants"].items():
        if v.get("kept_fraction") is None:
            continue
        ax.errorbar(v["kept_fraction"], v["zeroshot_top1"], yerr=v["seed_spread"] / 2, fmt="o", capsize=3)
        ax.annotate(name, (v["kept_fraction"], v["zeroshot_top1"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("fraction of the pool kept")
    ax.set_ylabel("zero-shot top-1 (mean over seeds)")
    ax.set_title(f"{report['experiment']['name']}: accuracy vs kept fraction")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _html(report: dict) -> str:
    spec = report["experiment"]["train"]
    rows = []
    for name, v in report["variants"].items():
        truth = v.get("truth") or {}
        funnel = "<br>".join(f"{html.escape(f['stage'])}: {f['in']} → {f['kept']}"
                             + (f" ({', '.join(f'{html.escape(r)}={n}' for r, n in list(f['reasons'].items())[:3])})"
                                if f["reasons"] else "") for f in v.get("funnel", []))
        warnings = "<br>".join(f"⚠ {html.escape(w)}" for w in v.get("warnings", []))
        best = ' class="best"' if name == report["best"] else ""
        rows.append(
            f"<tr{best}><td>{html.escape(name)}</td><td>{v['kept']}</td><td>{_pct(v.get('kept_fraction'))}</td>"
            f"<td>{_pct(truth.get('clean_kept'))}</td><td>{_pct(truth.get('mismatch_removed'))}</td>"
            f"<td>{_pct(truth.get('noise_removed'))}</td><td>{v['zeroshot_top1']:.4f} ± {v['seed_spread'] / 2:.4f}</td>"
            f"<td class='small'>{funnel}</td><td class='warn'>{warnings}</td></tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ablation {html.escape(report['experiment']['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
.best{{background:#e8f6e8}}.small{{font-size:80%}}.warn{{color:#b00;font-size:85%}}</style></head><body>
<h1>Ablation: {html.escape(report['experiment']['name'])}</h1>
<p>{report['pool_rows']} pool rows. Every variant trained {html.escape(str(spec['model']))} for {spec['steps']} steps
x {spec['batch_size']} pairs (equal samples seen), seeds {spec['seeds']}; zero-shot top-1 on
{html.escape(report['experiment']['eval'])}. Segments computed {report['segments']['computed']}, reused
{report['segments']['reused']}; {report['wall_s']:.0f} s in all.</p>
<table><tr><th>variant</th><th>kept</th><th>kept %</th><th>clean kept %</th><th>mismatch removed %</th>
<th>noise removed %</th><th>zero-shot top-1 (± half spread)</th><th>funnel</th><th>warnings</th></tr>
{''.join(rows)}</table>
<p>Best: <b>{html.escape(report['best'])}</b> (recipe: <code>best_recipe.yaml</code>)</p>
<img src="accuracy_vs_kept.png" alt="accuracy vs kept fraction"></body></html>
"""


def _recipe_text(report: dict, best: dict) -> str:
    spec = report["experiment"]["train"]
    header = [f"# Chosen by `curate ablate` ({report['experiment']['name']}): best of {len(report['variants'])} "
              f"variants by zero-shot top-1", f"# after {spec['steps']} steps x {spec['batch_size']} of "
              f"{spec['model']} over seeds {spec['seeds']}."]
    for name, v in report["variants"].items():
        truth = v.get("truth") or {}
        header.append(f"#   {name}: top-1 {v['zeroshot_top1']:.4f} (spread {v['seed_spread']:.4f}), kept "
                      f"{v['kept']}, clean kept {_pct(truth.get('clean_kept'))}%, "
                      f"mismatch removed {_pct(truth.get('mismatch_removed'))}%")
    return "\n".join(header) + "\n" + yaml.safe_dump(best["recipe"], sort_keys=False)
