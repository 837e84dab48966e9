"""The ablation's comparison report: one table, one plot, the best variant's recipe.

``OUT/report/index.html`` (per variant: funnel, kept fraction, clean figures, zero-shot
top-1 with its seed spread from two seeds up, warnings), ``OUT/report/accuracy_vs_kept.png``
(one row per variant, so long names never overlap) and ``OUT/best_recipe.yaml`` with the
figures it was chosen by, and any tie, in a comment at its top. The recipe is written as
the base recipe's file has it: ``${VAR}`` references stay references.
"""

from __future__ import annotations

import html
import textwrap
from pathlib import Path

import yaml

from clipcurate.curation.ablate import ORACLE, choice_text, top1_text

LABEL_WIDTH = 28  # characters per line of a variant's name in the plot


def write_report(report: dict, out: Path) -> None:
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    _plot(report, folder / "accuracy_vs_kept.png")
    (folder / "index.html").write_text(_html(report), encoding="utf-8")
    best = report["variants"][report["best"]]
    recipe = best.get("recipe_as_written") or best["recipe"]
    if recipe is not None:
        (out / "best_recipe.yaml").write_text(_recipe_text(report, recipe), encoding="utf-8")


def summary_table(report: dict) -> str:
    """Plain-text table of the variants, for the terminal."""
    lines = [f"{'variant':<24}{'kept':>8}{'kept %':>8}{'clean kept':>11}{'mismatch rm':>12}"
             f"{'noise rm':>10}{'top-1':>8}{'spread':>8}"]
    for name, v in report["variants"].items():
        truth = v.get("truth") or {}
        lines.append(f"{name:<24}{v['kept']:>8}{_pct(v.get('kept_fraction')):>8}{_pct(truth.get('clean_kept')):>11}"
                     f"{_pct(truth.get('mismatch_removed')):>12}{_pct(truth.get('noise_removed')):>10}"
                     f"{v['zeroshot_top1']:>8.4f}{_spread(v):>8}")
    lines.append(choice_text(_choice(report)))
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _spread(variant: dict) -> str:
    """The seed spread, or ``-`` where fewer than two seeds were measured."""
    return "-" if variant.get("seed_spread") is None else f"{variant['seed_spread']:.4f}"


def _choice(report: dict) -> dict:
    """The report's choice (a report written before ties were recorded has only ``best``)."""
    return report.get("choice") or {"best": report["best"], "tied": []}


def _plot(report: dict, path: Path) -> None:
    accuracy_figure(report).savefig(path, dpi=100)


def accuracy_figure(report: dict):
    """Top-1 and kept fraction as horizontal bars, one row per variant (wrapped names on
    one shared axis, so labels cannot collide as annotations next to nearby points do);
    the error bar is half the seed spread, drawn only from two seeds up."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(report["variants"])
    variants = [report["variants"][n] for n in names]
    labels = [_wrap(n) for n in names]
    rows = max(label.count("\n") + 1 for label in labels)
    fig = Figure(figsize=(10, 1.6 + 0.3 * rows * len(names)))
    FigureCanvasAgg(fig)
    top1_ax, kept_ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    y = list(range(len(names)))
    choice = _choice(report)
    winners = set(choice["tied"]) | {choice["best"]}
    colours = ["tab:green" if n in winners else "tab:gray" if n == ORACLE else "tab:blue" for n in names]
    top1_ax.barh(y, [v["zeroshot_top1"] for v in variants], color=colours)
    spread = [(v["zeroshot_top1"], i, v["seed_spread"] / 2) for i, v in enumerate(variants)
              if v.get("seed_spread") is not None]
    if spread:
        x, rows_y, half = zip(*spread)
        top1_ax.errorbar(x, rows_y, xerr=half, fmt="none", ecolor="black", capsize=3)
    kept_ax.barh(y, [v.get("kept_fraction") or 0.0 for v in variants], color=colours)
    top1_ax.set_yticks(y, labels, fontsize=8)
    top1_ax.invert_yaxis()
    top1_ax.set_xlabel("zero-shot top-1, mean over seeds" + (" (± half the seed spread)" if spread else ""))
    kept_ax.set_xlabel("fraction of the pool kept")
    kept_ax.set_xlim(0, 1)
    for ax in (top1_ax, kept_ax):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{report['experiment']['name']}: accuracy vs kept fraction (green: best)")
    fig.tight_layout()
    return fig


def _wrap(name: str) -> str:
    """A variant name on lines of at most LABEL_WIDTH characters, broken after ``_``, ``-``
    or ``.`` where it can (names are identifiers more often than sentences)."""
    spaced = name.replace("_", "_ ").replace("-", "- ").replace(".", ". ")
    lines = textwrap.wrap(spaced, LABEL_WIDTH, break_on_hyphens=False)
    return "\n".join(line.replace("_ ", "_").replace("- ", "-").replace(". ", ".") for line in lines)


def _html(report: dict) -> str:
    spec = report["experiment"]["train"]
    rows = []
    for name, v in report["variants"].items():
        truth = v.get("truth") or {}
        funnel = "<br>".join(f"{html.escape(f['stage'])}: {f['in']} → {f['kept']}"
                             + (f" ({', '.join(f'{html.escape(r)}={n}' for r, n in list(f['reasons'].items())[:3])})"
                                if f["reasons"] else "") for f in v.get("funnel", []))
        warnings = "<br>".join(f"⚠ {html.escape(w)}" for w in v.get("warnings", []))
        best = ' class="best"' if name == report["best"] or name in _choice(report)["tied"] else ""
        rows.append(
            f"<tr{best}><td>{html.escape(name)}</td><td>{v['kept']}</td><td>{_pct(v.get('kept_fraction'))}</td>"
            f"<td>{_pct(truth.get('clean_kept'))}</td><td>{_pct(truth.get('mismatch_removed'))}</td>"
            f"<td>{_pct(truth.get('noise_removed'))}</td><td>{html.escape(top1_text(v))}</td>"
            f"<td class='small'>{funnel}</td><td class='warn'>{warnings}</td></tr>")
    measured = any(v.get("seed_spread") is not None for v in report["variants"].values())
    spread = " (± half the seed spread)" if measured else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ablation {html.escape(report['experiment']['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
.best{{background:#e8f6e8}}.small{{font-size:80%}}.warn{{color:#b00;font-size:85%}}</style></head><body>
<h1>Ablation: {html.escape(report['experiment']['name'])}</h1>
<p>{report['pool_rows']} pool rows. Every variant trained {html.escape(str(spec['model']))} for {spec['steps']} steps
x {spec['batch_size']} pairs (equal samples seen), seeds {spec['seeds']}; zero-shot top-1 on
{html.escape(report['experiment']['eval'])}. Segments computed {report['segments']['computed']}, reused
{report['segments']['reused']}; {report['wall_s']:.0f} s in all.</p>
<table><tr><th>variant</th><th>kept</th><th>kept %</th><th>clean kept %</th><th>mismatch removed %</th>
<th>noise removed %</th><th>zero-shot top-1{spread}</th><th>funnel</th><th>warnings</th></tr>
{''.join(rows)}</table>
<p><b>{html.escape(choice_text(_choice(report)))}</b> (recipe: <code>best_recipe.yaml</code>)</p>
<img src="accuracy_vs_kept.png" alt="accuracy vs kept fraction"></body></html>
"""


def _recipe_text(report: dict, recipe: dict) -> str:
    spec = report["experiment"]["train"]
    header = [f"# Chosen by `curate ablate` ({report['experiment']['name']}): best of {len(report['variants'])} "
              f"variants by zero-shot top-1", f"# after {spec['steps']} steps x {spec['batch_size']} of "
              f"{spec['model']} over seeds {spec['seeds']}.", f"# {choice_text(_choice(report))}"]
    for name, v in report["variants"].items():
        truth = v.get("truth") or {}
        spread = "" if v.get("seed_spread") is None else f" (spread {v['seed_spread']:.4f})"
        header.append(f"#   {name}: top-1 {v['zeroshot_top1']:.4f}{spread}, kept "
                      f"{v['kept']}, clean kept {_pct(truth.get('clean_kept'))}%, "
                      f"mismatch removed {_pct(truth.get('mismatch_removed'))}%")
    return "\n".join(header) + "\n" + yaml.safe_dump(recipe, sort_keys=False)
