"""Plots of one run's statistics, as PNG files (matplotlib, no display needed).

Every function takes the dict of :func:`curation.audit.stats.compute_stats` and a
path, draws from the already-binned numbers (no data is read here) and returns the
path, or ``None`` when the run has nothing to show (the report then says "not
present"). Figures are built with ``matplotlib.figure.Figure`` directly, so no GUI
backend and no pyplot global state are involved (safe in tests and threads).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

KEPT = "#2a9d8f"
REJECTED = "#e76f51"
BEFORE = "#6c757d"
AFTER = "#264653"
STAGE_COLORS = ("#e76f51", "#f4a261", "#e9c46a", "#8d99ae", "#b56576", "#6d597a",
                "#ef476f", "#ffb4a2", "#9c6644", "#a3b18a", "#cdb4db", "#457b9d")
WIDTH_IN, DPI = 7.2, 100


def make_plots(stats: dict, folder: Path, *, prefix: str = "") -> dict[str, Path | None]:
    """Draw every plot the run supports into ``folder``; name -> file (None: absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = {
        "funnel": funnel(stats, folder / f"{prefix}funnel.png"),
        "reasons": reasons(stats, folder / f"{prefix}reasons.png"),
        "clip_score": histogram(stats, "clip_score", folder / f"{prefix}clip_score.png"),
        "captions": histograms(stats, ("caption_chars", "caption_words"), folder / f"{prefix}captions.png"),
        "image_size": histograms(stats, ("width", "height", "log2_aspect"), folder / f"{prefix}image_size.png"),
        "lang": languages(stats, folder / f"{prefix}lang.png"),
        "dedup": dedup_groups(stats, folder / f"{prefix}dedup.png"),
        "metaclip_counts": metaclip_counts(stats, folder / f"{prefix}metaclip_counts.png"),
        "metaclip_top": metaclip_top(stats, folder / f"{prefix}metaclip_top.png"),
    }
    for name, entry in stats["quantities"].items():
        if entry["stage_column"] and name != "clip_score":
            plots[f"column:{name}"] = histogram(stats, name, folder / f"{prefix}column_{name}.png")
    return plots


def funnel(stats: dict, path: Path) -> Path | None:
    """Per stage: rows in, kept (green) and rejected split by reason (warm colours)."""
    stages = stats["stages"]
    if not stages:
        return None
    n_reasons = len({r for s in stages for r in s["reasons"]}) + 1
    fig = Figure(figsize=(WIDTH_IN, 0.5 * len(stages) + 0.2 * ((n_reasons + 2) // 3) + 1.2), dpi=DPI,
                 layout="constrained")
    ax = fig.subplots()
    names = [s["name"] for s in stages][::-1]
    colors = _reason_colors(stats)
    drawn = set()
    for y, stage in enumerate(stages[::-1]):
        ax.barh(y, stage["kept"], color=KEPT, label="kept" if "kept" not in drawn else None)
        drawn.add("kept")
        left = stage["kept"]
        for reason, n in sorted(stage["reasons"].items(), key=lambda kv: -kv[1]):
            label = reason if reason not in drawn else None
            ax.barh(y, n, left=left, color=colors.get(reason, REJECTED), label=label)
            drawn.add(reason)
            left += n
        share = stage["rejected"] / stage["in"] if stage["in"] else 0
        ax.text(stage["in"], y, f"  {stage['in']:,} in, {share:.1%} out", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("rows")
    ax.xaxis.set_major_formatter(FuncFormatter(_si))
    ax.set_xlim(0, max(s["in"] for s in stages) * 1.3 or 1)
    fig.legend(fontsize=7, loc="outside lower center", ncols=3, frameon=False)
    ax.set_title("Funnel: rows entering each stage, kept and rejected by reason", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def reasons(stats: dict, path: Path) -> Path | None:
    """Rejected rows per reason, counted in the rejects files."""
    counts = stats["reasons"]
    if not counts:
        return None
    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(WIDTH_IN, 0.32 * len(items) + 1.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    colors = _reason_colors(stats)
    ax.barh(range(len(items)), [n for _, n in items], color=[colors.get(r, REJECTED) for r, _ in items])
    ax.set_yticks(range(len(items)), [r for r, _ in items], fontsize=8)
    total = stats["totals"]["input"] or 1
    for y, (_, n) in enumerate(items):
        ax.text(n, y, f" {n:,} ({n / total:.1%})", va="center", fontsize=7)
    ax.set_xlim(0, max(n for _, n in items) * 1.25)
    ax.xaxis.set_major_formatter(FuncFormatter(_si))
    ax.set_xlabel("rejected rows")
    ax.set_title("Rejections by reason (share of input)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def histogram(stats: dict, name: str, path: Path) -> Path | None:
    entry = stats["quantities"].get(name)
    if not entry or not entry["hist"]:
        return None
    fig = Figure(figsize=(WIDTH_IN, 3.2), dpi=DPI, layout="constrained")
    _draw_hist(fig.subplots(), entry, name)
    return _save(fig, path)


def histograms(stats: dict, names: tuple[str, ...], path: Path) -> Path | None:
    present = [n for n in names if stats["quantities"].get(n, {}).get("hist")]
    if not present:
        return None
    fig = Figure(figsize=(WIDTH_IN, 3.0), dpi=DPI, layout="constrained")
    for ax, name in zip(fig.subplots(1, len(present), squeeze=False)[0], present):
        _draw_hist(ax, stats["quantities"][name], name, compact=len(present) > 1)
    return _save(fig, path)


def languages(stats: dict, path: Path) -> Path | None:
    lang = stats.get("lang")
    if not lang:
        return None
    codes = list(lang["kept"])
    fig = Figure(figsize=(WIDTH_IN, 3.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    x = range(len(codes))
    ax.bar([i - 0.2 for i in x], [lang["kept"][c] for c in codes], width=0.4, color=KEPT, label="kept")
    ax.bar([i + 0.2 for i in x], [lang["rejected"][c] for c in codes], width=0.4, color=REJECTED,
           label="rejected")
    ax.set_xticks(list(x), codes, fontsize=8, rotation=30)
    ax.yaxis.set_major_formatter(FuncFormatter(_si))
    ax.set_ylabel("rows")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"Languages ({lang['distinct']} distinct; top {len(codes)})", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def dedup_groups(stats: dict, path: Path) -> Path | None:
    """Duplicate group sizes per dedup stage (log-log: most groups are pairs)."""
    kinds = {k: v for k, v in stats["dedup"].items() if v["group_sizes"]}
    if not kinds:
        return None
    fig = Figure(figsize=(WIDTH_IN, 3.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    markers = "osD^v<>"
    for i, (stage, entry) in enumerate(kinds.items()):
        sizes = sorted((int(s), n) for s, n in entry["group_sizes"].items())
        ax.plot([s for s, _ in sizes], [n for _, n in sizes], marker=markers[i % len(markers)],
                linestyle="none", markersize=5, alpha=0.85, color=STAGE_COLORS[i % len(STAGE_COLORS)],
                label=f"{stage}: {entry['groups']:,} groups, {entry['duplicates']:,} removed")
    sizes = [int(s) for e in kinds.values() for s in e["group_sizes"]]
    groups = [n for e in kinds.values() for n in e["group_sizes"].values()]
    if max(sizes) > 10:
        ax.set_xscale("log")
    if max(groups) > 10:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(groups) + 1)
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "linear":
            axis.set_major_locator(MaxNLocator(integer=True))
        axis.set_major_formatter(FuncFormatter(_si))
    ax.set_xlabel("group size (kept row + its duplicates)")
    ax.set_ylabel("groups")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("Duplicate group sizes by dedup stage", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def metaclip_counts(stats: dict, path: Path) -> Path | None:
    """Entry match counts by rank before/after balancing, t marked (MetaCLIP Fig. 2)."""
    meta = stats.get("metaclip")
    if not meta or "curve" not in meta or not meta["curve"]["rank"]:
        return None
    curve = meta["curve"]
    fig = Figure(figsize=(WIDTH_IN, 3.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    before = [max(c, 0.8) for c in curve["before"]]  # zeros cannot sit on a log axis
    after = [max(c, 0.8) for c in curve["after"]]
    ax.plot(curve["rank"], before, color=BEFORE, label="before balancing")
    ax.plot(curve["rank"], after, color=AFTER, label="after balancing")
    if meta.get("t"):
        ax.axhline(meta["t"], color=REJECTED, linestyle="--", linewidth=1, label=f"t = {meta['t']:,}")
        if meta.get("head_entries") is not None:
            ax.axvline(max(meta["head_entries"], 1), color="#adb5bd", linestyle=":", linewidth=1)
            ax.text(max(meta["head_entries"], 1), meta["t"], f" head: {meta['head_entries']:,} entries",
                    fontsize=8, va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entry rank (by count before balancing)")
    ax.set_ylabel("matched pairs")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"MetaCLIP entry counts, {meta['entries']:,} entries (head above t is sub-sampled)",
                 fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def metaclip_top(stats: dict, path: Path) -> Path | None:
    meta = stats.get("metaclip")
    if not meta or not meta.get("top"):
        return None
    top = meta["top"][:20][::-1]
    fig = Figure(figsize=(WIDTH_IN, 0.22 * len(top) + 1.3), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = range(len(top))
    ax.barh([i + 0.2 for i in y], [e["count_before"] for e in top], height=0.4, color=BEFORE,
            label="before balancing")
    ax.barh([i - 0.2 for i in y], [e["count_after"] for e in top], height=0.4, color=AFTER,
            label="after balancing")
    if meta.get("t"):
        ax.axvline(meta["t"], color=REJECTED, linestyle="--", linewidth=1, label=f"t = {meta['t']:,}")
    ax.set_yticks(list(y), [str(e["entry"]) for e in top], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("matched pairs (log)")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_title("Top metadata entries", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


# ---------------------------------------------------------------- helpers


def _draw_hist(ax, entry: dict, name: str, *, compact: bool = False) -> None:
    hist = entry["hist"]
    edges = hist["edges"]
    ax.stairs(hist["rejected"], edges, fill=True, color=REJECTED, alpha=0.45, label="rejected")
    ax.stairs(hist["kept"], edges, fill=True, color=KEPT, alpha=0.6, label="kept")
    if entry.get("kept") and entry["kept"].get("p50") is not None:
        ax.axvline(entry["kept"]["p50"], color=KEPT, linestyle="--", linewidth=1)
    if name == "log2_aspect":
        ticks = [t for t in (-3, -2, -1, 0, 1, 2, 3) if edges[0] <= t <= edges[-1]]
        ax.set_xticks(ticks, [_aspect_label(t) for t in ticks])
    label = entry["label"] + (" (last bin: and above)" if hist["clipped_above"] and not compact else "")
    ax.set_xlabel(label, fontsize=8 if compact else 9)
    ax.yaxis.set_major_formatter(FuncFormatter(_si))
    ax.tick_params(labelsize=7 if compact else 8)
    ax.legend(fontsize=7, frameon=False)
    if not compact:
        ax.set_ylabel("rows")
        ax.set_title(f"{entry['label']}: kept vs rejected (dashed: kept median)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)


def _aspect_label(log2: int) -> str:
    return f"{2 ** log2}:1" if log2 >= 0 else f"1:{2 ** -log2}"


def _reason_colors(stats: dict) -> dict[str, str]:
    order = [r for s in stats["stages"] for r in s["reasons"]]
    order += [r for r in stats["reasons"] if r not in order]
    return {r: STAGE_COLORS[i % len(STAGE_COLORS)] for i, r in enumerate(order)}


def _si(value: float, _pos=None) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
