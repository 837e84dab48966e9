"""The audit report: ``OUT/report/index.html`` plus ``OUT/report/assets/`` (plots, thumbnails).

The page is self-contained: inline CSS, no JavaScript, no fonts or scripts from a
CDN, images referenced by relative paths, so the folder opens offline and can be
copied or zipped as is. ``stats.json`` next to it holds every number the page shows
(``compare.json`` too, with ``--compare``). Sections follow what a person auditing a
curated CLIP dataset looks at: warnings first (a stage that removed an unusual share of
its input), the funnel, where the time went, the score and caption distributions, image
sizes, languages, duplicates, MetaCLIP balancing, and sample pairs per decision.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from clipcurate.curation.audit.plots import make_plots
from clipcurate.curation.audit.stats import compare_runs, compute_stats, open_run
from clipcurate.curation.audit.thumbnails import Card, sample_cards
from clipcurate.pipelines.manifest import format_resume

ASSETS = "assets"


@dataclass
class RunView:
    """One run as the page shows it: its stats, plot files and sample cards."""

    name: str
    stats: dict
    plots: dict[str, Path | None]
    cards: dict
    manifest: dict = field(repr=False, default_factory=dict)
    neighbours: str = ""  # HTML of curation.search.audit_neighbours


@dataclass
class Report:
    index: Path
    stats: dict
    failed_checks: list[str]
    compare: dict | None = None


def write_report(out: str | Path, *, compare: str | Path | None = None, samples: int = 24,
                 per_reason: int = 6) -> Report:
    """Compute stats, draw plots, sample thumbnails and write ``OUT/report/index.html``."""
    out = Path(out)
    report = out / "report"
    assets = report / ASSETS
    shutil.rmtree(assets, ignore_errors=True)
    assets.mkdir(parents=True)

    runs = [_view(out, report, "a", samples, per_reason)]
    comparison = None
    if compare is not None:
        runs.append(_view(Path(compare), report, "b", samples, per_reason))
        comparison = compare_runs(open_run(out), open_run(compare))

    _write_text(report / "stats.json", json.dumps(runs[0].stats, indent=1))
    compare_json = report / "compare.json"
    if comparison is not None:
        _write_text(compare_json, json.dumps({"overlap": comparison, "other": runs[1].stats}, indent=1))
    elif compare_json.exists():
        compare_json.unlink()
    _write_text(report / "index.html", render(runs, report, comparison))
    failed = [c["name"] for c in runs[0].stats["checks"] if not c["ok"]]
    return Report(index=report / "index.html", stats=runs[0].stats, failed_checks=failed,
                  compare=comparison)


def _view(out: Path, report: Path, key: str, samples: int, per_reason: int) -> RunView:
    run = open_run(out)
    stats = compute_stats(out)
    plots = make_plots(stats, report / ASSETS, prefix=f"{key}_")
    cards = sample_cards(run, report, subdir=f"{ASSETS}/thumbs-{key}", count=samples, per_reason=per_reason)
    from clipcurate.curation.audit.remote import source_of
    from clipcurate.curation.search import audit_neighbours

    return RunView(name=_run_name(out), stats=stats, plots=plots, cards=cards, manifest=run.manifest,
                   neighbours=audit_neighbours(source_of(out) or out))


def _run_name(out: Path) -> str:
    return out.resolve().name or str(out)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------- rendering

SECTIONS = (
    ("warnings", "Warnings"),
    ("overview", "Overview"),
    ("funnel", "Funnel"),
    ("time", "Time"),
    ("clip", "CLIP score"),
    ("captions", "Captions"),
    ("images", "Image size"),
    ("lang", "Languages"),
    ("dedup", "Duplicates"),
    ("metaclip", "MetaCLIP"),
    ("learned", "Heads and DataComp filters"),
    ("columns", "Other columns"),
    ("samples", "Samples"),
    ("neighbours", "Nearest neighbours"),
)


def render(runs: list[RunView], report: Path, comparison: dict | None) -> str:
    title = "Audit: " + " vs ".join(r.name for r in runs)
    nav = "".join(f'<a href="#{key}">{label}</a>' for key, label in
                  ((("compare", "Comparison"),) if comparison else ()) + SECTIONS)
    body = []
    if comparison:
        body.append(_section("compare", "Comparison", [_comparison(runs, comparison)], single=True))
    if runs[0].stats.get("against"):
        nav = '<a href="#against">Against releases</a>' + nav
        body.append(_section("against", "Against earlier releases", [_against(runs[0].stats["against"])], single=True))
    builders = {
        "warnings": _warnings, "overview": _overview, "funnel": _funnel, "time": _time, "clip": _clip, "captions": _captions,
        "images": _images, "lang": _lang, "dedup": _dedup, "metaclip": _metaclip,
        "learned": _learned, "columns": _columns, "samples": _samples, "neighbours": lambda run, report: run.neighbours,
    }
    for key, label in SECTIONS:
        body.append(_section(key, label, [builders[key](run, report) for run in runs],
                             names=[r.name for r in runs]))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<header><h1>{_e(title)}</h1><nav>{nav}</nav></header>
<main>
{''.join(body)}
</main>
<footer>Written by <code>curate audit</code>. Numbers: <a href="stats.json">stats.json</a>{
        ' and <a href="compare.json">compare.json</a>' if comparison else ''}.</footer>
</body>
</html>
"""


def _section(key: str, label: str, parts: list[str], *, names: list[str] | None = None,
             single: bool = False) -> str:
    if single or len(parts) == 1:
        inner = "".join(parts)
        return f'<section id="{key}"><h2>{_e(label)}</h2>{inner}</section>\n'
    cols = "".join(f'<div class="col"><h3 class="runname">{_e(n)}</h3>{p}</div>' for n, p in zip(names, parts))
    return f'<section id="{key}"><h2>{_e(label)}</h2><div class="cols">{cols}</div></section>\n'


def _overview(run: RunView, report: Path) -> str:
    s, m = run.stats, run.manifest
    t = s["totals"]
    tiles = "".join(f'<div class="tile"><b>{v}</b><span>{_e(k)}</span></div>' for k, v in (
        ("input rows", f"{t['input']:,}"), ("kept", f"{t['kept']:,}"), ("rejected", f"{t['rejected']:,}"),
        ("keep rate", _pct(t["keep_rate"])), ("shards", f"{s['files']['shards']:,}"),
        ("shard size", _bytes(s["files"]["shard_bytes"]))))
    checks = "".join(
        f'<li class="{"ok" if c["ok"] else "bad"}">{"✓" if c["ok"] else "✗"} {_e(c["name"])}'
        f'{" — " + _e(c["detail"]) if c["detail"] else ""}</li>' for c in s["checks"])
    facts = _table(["", ""], [
        ["output", _e(s["out"])], ["recipe", _e(str(s.get("recipe")))],
        ["input", _e(", ".join(map(str, m.get("input", {}).get("paths", []))))],
        ["seed", _e(str(m.get("seed")))], ["created", _e(str(m.get("created")))],
        ["wall time", _e(f"{m.get('wall_s', 0):.1f} s" if isinstance(m.get("wall_s"), (int, float)) else "")],
        ["versions", _e(", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()))],
        ["fingerprint", _e(_fingerprint(m.get("fingerprint")))],
        ["resume", _e(format_resume(m["resume"]) if m.get("resume") is not None else "")],
        ["columns (kept)", _e(", ".join(s["columns"]["kept"]))],
    ], header=False)
    return f'<div class="tiles">{tiles}</div><h4>Checks: manifest vs files</h4><ul class="checks">{checks}</ul>{facts}'


def _fingerprint(fingerprint: dict | None) -> str:
    """What the run is a function of (pipelines/fingerprint.py): the input's digest and each
    stage's cumulative one; a rerun reuses work only where these agree."""
    if not fingerprint:
        return "not recorded (a run made before fingerprints)"
    stages = ", ".join(f"{s['stage']} {s['fingerprint']}" for s in fingerprint.get("stages", []))
    return f"input {fingerprint.get('input')}; seed {fingerprint.get('seed')}; stages: {stages}"


def _warnings(run: RunView, report: Path) -> str:
    s = run.stats
    threshold = f"{s['warn_reject_share'] * 100:g}%"
    if not s["warnings"]:
        return f'<p class="note">No stage removed more than {threshold} of the rows it received.</p>'
    items = "".join(f"<li>⚠ {_e(message)}</li>" for message in s["warnings"])
    return (f'<ul class="warnings">{items}</ul><p class="note">A stage that removes more than the recipe\'s '
            f'<code>warn_reject_share</code> ({threshold}) of its input is flagged: check its parameters and '
            f'the input columns before trusting the output.</p>')


def _funnel(run: RunView, report: Path) -> str:
    s = run.stats
    if not s["stages"]:
        return _absent("no stages in the manifest")
    rows = []
    for st in s["stages"]:
        reasons = "<br>".join(f"{_e(r)}: {n:,}" for r, n in sorted(st["reasons"].items(), key=lambda kv: -kv[1]))
        summary = "<br>".join(f"{_e(k)} = {_e(json.dumps(v))}" for k, v in st["summary"].items())
        share = _pct(st["rejected"] / st["in"] if st["in"] else None)
        flag = ' <b class="flag" title="over warn_reject_share">⚠</b>' if st.get("warning") else ""
        rows.append([f'{_e(st["name"])}{flag}<br><small>{_e(str(st["type"]))}</small>', f"{st['in']:,}",
                     f"{st['kept']:,}", f"{st['rejected']:,}<br><small>{share}</small>", reasons,
                     f"<small>{summary}</small>"])
    table = _table(["stage", "in", "kept", "rejected", "reasons", "summary"], rows)
    return _img(run, "funnel", report, "funnel") + _img(run, "reasons", report, "rejections by reason") + table


def _time(run: RunView, report: Path) -> str:
    stages = [st for st in run.stats["stages"] if st.get("cost")]
    if not stages:
        return _absent("not recorded: this run's manifest has no stage costs")
    rows = [[_e(st["name"]), f"{c['rows']:,}", _num(c["worker_s"]), _num(c["cpu_s"]), _num(c["gpu_s"]),
             _num(c["rows_per_s"]), _pct(c["share"]), f"{c['max_workers']:,}"]
            for st in stages for c in (st["cost"],)]
    table = _table(["stage", "rows in", "worker-s", "CPU-s", "GPU-s", "rows / worker-s", "share of time",
                    "workers at once"], rows)
    timing = run.stats["timing"]
    phases = ", ".join(f"{_e(k)} {v:.1f} s" for k, v in timing.get("phases_s", {}).items())
    where = (f" on {_e(timing['executor'])} ({timing['cpus']:g} CPUs, {timing['gpus']:g} GPUs)"
             if timing.get("executor") else "")
    return (table + f'<p class="note">Wall time {_e(_seconds(timing.get("wall_s")))}{where}: {phases}. '
            "Worker-seconds add up each stage's calls on every worker (and a global stage's fit on the "
            "driver), so stages that ran side by side each count in full; the stage with the largest "
            "share is the one to give more workers.</p>")


def _clip(run: RunView, report: Path) -> str:
    if "clip_score" not in run.stats["quantities"]:
        return _absent("not present: no clip_score column in this run")
    return _img(run, "clip_score", report, "CLIP score histogram") + _summary_table(run.stats, ["clip_score"])


def _captions(run: RunView, report: Path) -> str:
    return (_img(run, "captions", report, "caption length and word count")
            + _summary_table(run.stats, ["caption_chars", "caption_words"]))


def _images(run: RunView, report: Path) -> str:
    return (_img(run, "image_size", report, "image width, height and aspect ratio")
            + _summary_table(run.stats, ["width", "height"])
            + '<p class="note">Rows rejected before download have no size and are not counted.</p>')


def _lang(run: RunView, report: Path) -> str:
    lang = run.stats.get("lang")
    if not lang:
        return _absent("not present: no lang column in this run")
    return _img(run, "lang", report, "languages")


def _dedup(run: RunView, report: Path) -> str:
    dedup = run.stats["dedup"]
    if not dedup:
        return _absent("not present: no dedup stage and no <stage>:duplicate_of=<uid> rejects")
    rows = []
    for stage, d in dedup.items():
        largest = ", ".join(f"{g['size']}" for g in d["largest"][:3])
        rows.append([_e(stage), _e(str(d.get("type"))), f"{d['groups']:,}", f"{d['duplicates']:,}",
                     largest or _e(d.get("note", ""))])
    return _img(run, "dedup", report, "duplicate group sizes") + _table(
        ["stage", "type", "groups", "duplicates removed", "largest groups"], rows)


def _metaclip(run: RunView, report: Path) -> str:
    meta = run.stats.get("metaclip")
    if not meta:
        return _absent("not present: no stats/<label>.entry_counts.parquet in the manifest")
    if meta.get("error"):
        return _absent(meta["error"])
    facts = _table(["", ""], [
        ["stage", _e(meta["label"])], ["t", f"{meta['t']:,}" if meta.get("t") is not None else "not recorded"],
        ["entries", f"{meta['entries']:,}"],
        ["head entries (count &gt; t)", f"{meta['head_entries']:,}" if meta.get("head_entries") is not None else ""],
        ["entries matched before / after", f"{meta['matched_before']:,} / {meta['matched_after']:,}"],
        ["matches before / after", f"{meta['matches_before']:,} / {meta['matches_after']:,}"],
        ["largest entry before / after", f"{meta['max_before']:,} / {meta['max_after']:,}"],
    ], header=False)
    kept = ""
    if meta.get("top_kept"):
        kept = "<h4>Top entries among kept rows (metaclip_entries column)</h4>" + _table(
            ["entry", "kept rows"], [[_e(str(e["entry"])), f"{e['rows']:,}"] for e in meta["top_kept"][:15]])
    return (_img(run, "metaclip_counts", report, "MetaCLIP entry counts, log-log")
            + _img(run, "metaclip_top", report, "top metadata entries") + facts + kept)


def _learned(run: RunView, report: Path) -> str:
    """Each head's score histogram with its cuts, and the share of the pool each head
    and each DataComp filter (text_classes, image_clusters) removed."""
    rows = run.stats.get("learned_filters") or []
    if not rows:
        return _absent("not present: no clip_heads, text_classes or image_clusters stage in this run")

    def cut(row: dict) -> str:
        rules = [f"{k} {row[k]:.4g}" for k in ("min_score", "max_score") if row.get(k) is not None]
        rules += [f"{k} {row[k]:g}" for k in ("keep_top", "keep_bottom") if row.get(k) is not None]
        return _e(", ".join(rules) or "—")

    table = _table(["stage", "filter", "removed", "of the pool", "of rows received", "cut"],
                   [[_e(r["stage"]), _e(r["filter"]), f"{r['removed']:,}", _pct(r["share_of_pool"]),
                     _pct(r["share_of_received"]), cut(r) if "column" in r else "—"] for r in rows])
    plots = [_img(run, f"column:{r['column']}", report, f"{r['filter']} score histogram")
             + _summary_table(run.stats, [r["column"]]) for r in rows if "column" in r]
    return (table + '<p class="note">A row rejected by one filter is not counted again by a later one '
            "(heads in recipe order, then stages in order); histograms show every scored row, kept and "
            "rejected.</p>" + "".join(plots))


def _columns(run: RunView, report: Path) -> str:
    parts = [_img(run, key, report, key.split(":", 1)[1]) for key in run.plots if key.startswith("column:")]
    names = [key.split(":", 1)[1] for key in run.plots if key.startswith("column:")]
    if names:
        parts.append(_summary_table(run.stats, names))
    if run.stats["embeddings"]:
        parts.append("<p class=\"note\">Embedding columns (not plotted): " + _e(", ".join(
            f"{k} {v}" for k, v in run.stats["embeddings"].items())) + "</p>")
    return "".join(parts) or _absent("not present: no other numeric stage columns (cat_* ...)")


def _samples(run: RunView, report: Path) -> str:
    cards = run.cards
    kept = "".join(_card(c) for c in cards["kept"]) or _absent("no kept rows")
    parts = [f'<h4>Kept ({len(cards["kept"])} of {run.stats["totals"]["kept"]:,}, smallest uids)</h4>'
             f'<div class="grid">{kept}</div>']
    for reason, group in cards["rejected"].items():
        total = run.stats["reasons"].get(reason, 0)
        parts.append(f'<h4>Rejected: {_e(reason)} ({len(group)} of {total:,})</h4>'
                     f'<div class="grid">{"".join(_card(c) for c in group)}</div>')
    return "".join(parts)


def _card(card: Card) -> str:
    meta = []
    if card.clip_score is not None:
        meta.append(f"CLIP {card.clip_score:.3f}")
    if card.width and card.height:
        meta.append(f"{card.width}×{card.height}")
    caption = _e(card.caption or "(no caption)")
    if card.thumb:
        visual = f'<img src="{_e(card.thumb)}" alt="{_e((card.caption or "")[:80])}">'
    elif card.duplicate_thumb:
        visual = (f'<div class="dup"><img src="{_e(card.duplicate_thumb)}" alt="kept original">'
                  f'<span>kept original</span></div>')
    else:  # rejects keep no image bytes: the caption is the card
        note = card.note if card.kept else "no image kept"
        visual = f'<div class="captioncard"><q>{caption}</q><small>{_e(note or "")}</small></div>'
        caption = ""
    reason = f'<div class="reason">{_e(card.reason)}</div>' if card.reason else ""
    detail = f'<div class="detail">{_e(card.detail)}</div>' if card.detail else ""
    caption_html = f'<p class="caption">{caption}</p>' if caption else ""
    return (f'<div class="card {"kept" if card.kept else "rejected"}">{visual}{reason}{detail}{caption_html}'
            f'<div class="meta">{" · ".join(meta)} <code title="{_e(card.uid)}">{_e(card.uid[:10])}</code></div></div>')


def _against(cmp: dict) -> str:
    """What an incremental run adds to its releases (``curation/audit/against.py``)."""
    rows = [["releases", ", ".join(f"{r['release']} ({r['rows']:,} rows)" for r in cmp["releases"])],
            ["new rows kept", f"{cmp['kept_new']:,}"], ["union rows", f"{cmp['union_rows']:,}"],
            ["came back (duplicates of a release)", f"{cmp['came_back']:,}"],
            ["same pair re-crawled (uid in a release)", f"{cmp['same_pair_recrawled']:,}"]]
    rows += [[f"came back, {stage}", f"{n:,}"] for stage, n in cmp["came_back_by_stage"].items()]
    rows += [[f"blocked, {reason}", f"{n:,}"] for reason, n in cmp["blocked_by_reason"].items()]
    parts = [_table(["", ""], rows, header=False)]
    entries = cmp.get("metaclip")
    if entries:
        parts.append(_table(["MetaCLIP entries", "releases", "union"], [
            [f"at t = {entries['t']}", _num(entries["entries_at_t_release"]), _num(entries["entries_at_t_union"])],
            ["tail share (matches under t)", _pct(entries["tail_share_release"]), _pct(entries["tail_share_union"])],
            ["entries covered", _num(entries["entries_covered_release"]), _num(entries["entries_covered_union"])],
        ]))
        parts.append(_table(["entry", "in releases", "added", "union"],
                            [[_e(r["entry"]), _num(r["count_release"]), _num(r["added"]), _num(r["count_union"])]
                             for r in entries["most_added"]]))
    return "".join(parts)


def _comparison(runs: list[RunView], cmp: dict) -> str:
    a, b = runs[0].stats, runs[1].stats
    rows = []

    def add(label, va, vb, fmt=lambda v: f"{v:,}" if isinstance(v, int) else str(v)):
        delta = ""
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            delta = f"{vb - va:+,}" if isinstance(va, int) and isinstance(vb, int) else f"{vb - va:+.3g}"
        rows.append([_e(label), fmt(va) if va is not None else "—", fmt(vb) if vb is not None else "—", delta])

    add("input rows", a["totals"]["input"], b["totals"]["input"])
    add("kept", a["totals"]["kept"], b["totals"]["kept"])
    add("keep rate", a["totals"]["keep_rate"], b["totals"]["keep_rate"], _pct)
    for name in ("clip_score", "caption_words", "width", "height"):
        qa, qb = a["quantities"].get(name, {}).get("kept"), b["quantities"].get(name, {}).get("kept")
        if qa or qb:
            add(f"median {name} (kept)", (qa or {}).get("p50"), (qb or {}).get("p50"), lambda v: f"{v:.3g}")
    reasons = sorted(set(a["reasons"]) | set(b["reasons"]))
    for r in reasons:
        add(f"rejected {r}", a["reasons"].get(r, 0), b["reasons"].get(r, 0))
    key_table = _table(["", _e(runs[0].name), _e(runs[1].name), "difference"], rows)
    overlap = _table(["kept in both", f"only {_e(runs[0].name)}", f"only {_e(runs[1].name)}", "Jaccard"],
                     [[f"{cmp['kept_both']:,}", f"{cmp['kept_only_a']:,}", f"{cmp['kept_only_b']:,}",
                       f"{cmp['jaccard']:.3f}" if cmp["jaccard"] is not None else "—"]])
    why = []
    for title, key in ((f"Kept only in {runs[0].name}: why {runs[1].name} rejected them", "only_a_rejected_in_b_by"),
                       (f"Kept only in {runs[1].name}: why {runs[0].name} rejected them", "only_b_rejected_in_a_by")):
        counts = cmp[key]
        why.append(f"<div class=\"col\"><h4>{_e(title)}</h4>" + (
            _table(["reason", "rows"], [[_e(r), f"{n:,}"] for r, n in counts.items()]) if counts
            else _absent("none (or the rows are not in the other run's rejects)")) + "</div>")
    return key_table + "<h4>Overlap of kept uids</h4>" + overlap + f'<div class="cols">{"".join(why)}</div>'


def _summary_table(stats: dict, names: list[str]) -> str:
    rows = []
    for name in names:
        q = stats["quantities"].get(name)
        if not q:
            continue
        for side in ("kept", "rejected"):
            v = q[side]
            if v:
                rows.append([_e(q["label"]), side, f"{v['count']:,}", *(_num(v[k]) for k in
                                                                        ("mean", "p05", "p50", "p95", "min", "max"))])
    return _table(["quantity", "rows", "count", "mean", "p5", "median", "p95", "min", "max"], rows) if rows else ""


def _img(run: RunView, key: str, report: Path, alt: str) -> str:
    path = run.plots.get(key)
    if path is None:
        return _absent(f"{alt}: not present in this run")
    return f'<img class="plot" src="{_e(path.relative_to(report).as_posix())}" alt="{_e(alt)}">'


def _table(columns: list[str], rows: list[list[str]], *, header: bool = True) -> str:
    """Cells are already-escaped HTML."""
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="tablewrap"><table>{head}{body}</table></div>'


def _absent(text: str) -> str:
    return f'<p class="absent">{_e(text)}</p>'


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def _seconds(value) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "not recorded"


def _num(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


CSS = """
:root{--kept:#2a9d8f;--rej:#e76f51;--ink:#1d2b36;--mute:#6c757d;--line:#dee2e6;--bg:#f8f9fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);background:var(--bg)}
header{position:sticky;top:0;z-index:1;background:#fff;border-bottom:1px solid var(--line);padding:.6rem 1.2rem}
header h1{font-size:1.15rem;margin:0 0 .3rem}
nav a{margin-right:.9rem;color:#264653;text-decoration:none;font-size:.9rem}
nav a:hover{text-decoration:underline}
main{padding:0 1.2rem 2rem;max-width:1600px;margin:auto}
section{background:#fff;border:1px solid var(--line);border-radius:8px;margin:1rem 0;padding:.8rem 1rem}
h2{font-size:1.1rem;margin:.2rem 0 .6rem}
h3.runname{font-size:.95rem;margin:.2rem 0 .5rem;color:var(--mute)}
h4{font-size:.92rem;margin:.9rem 0 .4rem}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:1.2rem}
.col{min-width:0}
img.plot{display:inline-block;vertical-align:top;max-width:100%;height:auto;margin:.4rem .6rem .4rem 0}
.tablewrap{overflow-x:auto;max-width:100%}
td small{color:var(--mute)}
table{border-collapse:collapse;font-size:.82rem;margin:.5rem 0;max-width:100%}
th,td{border-bottom:1px solid var(--line);padding:.2rem .55rem;text-align:left;vertical-align:top}
th{background:var(--bg)}
td code{font-size:.75rem;overflow-wrap:anywhere}
.tiles{display:flex;flex-wrap:wrap;gap:.6rem}
.tile{border:1px solid var(--line);border-radius:6px;padding:.4rem .8rem;min-width:7.5rem}
.tile b{display:block;font-size:1.25rem}
.tile span{color:var(--mute);font-size:.8rem}
ul.checks{list-style:none;padding:0;margin:.3rem 0;font-size:.85rem}
li.ok{color:#1b7f5b}
li.bad{color:#b42318;font-weight:600}
ul.warnings{margin:.3rem 0;padding:.5rem .8rem .5rem 1.6rem;background:#fff4e5;border:1px solid #f5b971;
  border-radius:6px;color:#7a3e00;font-weight:600}
.flag{color:#b45309}
.absent{color:var(--mute);font-style:italic}
.note{color:var(--mute);font-size:.82rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:.6rem}
.card{border:1px solid var(--line);border-radius:6px;padding:.35rem;font-size:.78rem;background:#fff;overflow:hidden}
.card.kept{border-top:3px solid var(--kept)}
.card.rejected{border-top:3px solid var(--rej)}
.card img{display:block;width:100%;height:150px;object-fit:contain;background:#eef0f2;border-radius:4px}
.captioncard{height:150px;display:flex;flex-direction:column;justify-content:space-between;padding:.5rem .6rem;
  background:repeating-linear-gradient(45deg,#f6f7f8,#f6f7f8 8px,#eef0f2 8px,#eef0f2 16px);border-radius:4px;overflow:hidden}
.captioncard q{font-size:.92rem;line-height:1.3;max-height:6.6em;overflow:hidden}
.captioncard small{color:var(--mute);font-size:.7rem}
.dup{position:relative}
.dup img{opacity:.75}
.dup span{position:absolute;left:4px;bottom:4px;background:rgba(255,255,255,.9);padding:0 .3rem;border-radius:3px;font-size:.7rem}
.reason{color:#b42318;font-weight:600;margin-top:.3rem;overflow-wrap:anywhere}
.detail{color:var(--mute);font-size:.7rem;overflow-wrap:anywhere}
.caption{margin:.3rem 0;max-height:4.2em;overflow:hidden}
.meta{color:var(--mute)}
footer{color:var(--mute);font-size:.8rem;text-align:center;padding:1rem}
"""
