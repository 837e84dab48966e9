"""Statistics of a run output, from columns only (polars lazy scans; never image bytes).

``compute_stats(out)`` reads ``manifest.json`` and scans ``shards/`` (kept rows) and
``rejects/`` (rejected rows) for the columns it needs: caption, width, height,
reject, and whatever stage columns exist (clip_score, lang, metaclip_entries, cat_*).
Histograms are binned inside polars, so memory stays O(bins) per quantity rather than
O(rows). The result is one JSON-able dict: it is ``report/stats.json`` and what the
plots and ``curate stats`` read. Every count is also cross-checked: the manifest
against the parquet files (``checks``), so a report never shows numbers that disagree
with the data it describes.

Warnings (a stage that removed more than the recipe's ``warn_reject_share`` of its input)
are derived from the manifest's counts with the runner's own rule, so runs written before
the manifest carried them get them too; stage costs and phase times are the manifest's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from clipcurate.curation.audit.against import compare_with_releases
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.limits import read_json
from clipcurate.pipelines.manifest import flag_stages
from clipcurate.pipelines.recipe import WARN_REJECT_SHARE
from clipcurate.pipelines.stage import parse_reject, reject_parts

BASE_COLUMNS = ("uid", "url", "caption", "image", "width", "height", "reject")
KNOWN_COLUMNS = frozenset(BASE_COLUMNS) | {"clip_score", "lang", "metaclip_entries"}
BINS = 40
TOP_LANGS = 12
TOP_ENTRIES = 25
CURVE_POINTS = 400



@dataclass
class Run:
    """A run output folder: its manifest and parquet files, with their column schemas."""

    out: Path
    manifest: dict
    shards: list[Path]
    rejects: list[Path]
    kept_schema: dict[str, pl.DataType]
    reject_schema: dict[str, pl.DataType]

    def kept(self) -> pl.LazyFrame:
        return _scan(self.shards, self.kept_schema)

    def rejected(self, *, parsed: bool = True) -> pl.LazyFrame:
        """Rejected rows; ``parsed`` adds ``reason`` ("<stage>:<reason>"), ``stage``, ``detail``."""
        frame = _scan(self.rejects, self.reject_schema)
        return _parse_reject(frame) if parsed else frame

    def has(self, column: str) -> bool:
        return column in self.kept_schema or column in self.reject_schema


def open_run(out: str | Path) -> Run:
    """Read a run folder's manifest and list its parquet files (listed and on disk)."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{out}: no manifest.json (is this the output folder of 'curate run'?)")
    manifest = read_json(manifest_path)
    shards = _files(out, manifest, "shards")
    rejects = _files(out, manifest, "rejects")
    kept_schema, reject_schema = _schema(shards), _schema(rejects)
    # an empty side (nothing kept, nothing rejected) takes the other side's columns
    base = {"uid": pl.String, "url": pl.String, "caption": pl.String, "width": pl.Int32,
            "height": pl.Int32, "reject": pl.String}
    if not shards:
        kept_schema = {**base, "image": pl.Binary, **reject_schema}
    if not rejects:
        reject_schema = {k: v for k, v in {**base, **kept_schema}.items() if k != "image"}
    return Run(out, manifest, shards, rejects, kept_schema, reject_schema)


def compute_stats(out: str | Path, *, bins: int = BINS) -> dict:
    """All statistics of one run, JSON-able (``report/stats.json``)."""
    run = open_run(out)
    manifest = run.manifest
    kept = run.kept()
    # distinct reject strings are few (reasons, plus one per duplicate group): parse those
    by_reject = run.rejected(parsed=False).group_by("reject").agg(pl.len())

    rows = _rows(run)
    quantities = _quantities(run)
    queries = {
        "kept_rows": kept.select(pl.len()),
        "by_reject": by_reject,
        "unique_uids": rows.select(pl.col("uid").n_unique()),
        # one narrow float32 column per quantity: the only per-row data held in memory
        "values": rows.select("kept", *[spec["expr"].cast(pl.Float32).alias(name)
                                        for name, spec in quantities.items()]),
    }
    if run.has("lang"):
        queries["lang"] = rows.group_by("kept", "lang").agg(pl.len())
    if "metaclip_entries" in run.kept_schema:
        queries["kept_entries"] = (
            kept.select(pl.col("metaclip_entries").explode().alias("entry_id"))
            .drop_nulls().group_by("entry_id").agg(pl.len().alias("rows"))
            .sort("rows", descending=True).head(TOP_ENTRIES)
        )
    names = list(queries)
    frames = dict(zip(names, pl.collect_all([queries[k] for k in names])))

    values = frames.pop("values")
    ranges = values.select(_range_exprs(quantities)).row(0, named=True)
    summary = {row["kept"]: row for row in values.group_by("kept").agg(_summary_exprs(quantities))
               .iter_rows(named=True)}
    binning = {name: _bin_edges(name, spec, ranges, bins) for name, spec in quantities.items()}
    hists = {name: _hist_result(_hist_counts(values, name, binning[name]), binning[name])
             for name in quantities if binning[name] is not None}
    del values

    by_reject = _parse_reject(frames["by_reject"].lazy()).collect()
    kept_rows = frames["kept_rows"].item()
    rejected_rows = int(by_reject["len"].sum())
    reasons = _counts(by_reject.group_by("reason").agg(pl.col("len").sum()), "reason")
    by_stage = _counts(by_reject.group_by("stage").agg(pl.col("len").sum()), "stage")
    duplicates = (by_reject.filter(pl.col("detail").is_not_null() & pl.col("reason").str.ends_with(":duplicate_of"))
                  .select("stage", "detail", pl.col("len").alias("duplicates")))

    stages = _stages(manifest, by_stage)
    threshold = manifest.get("recipe", {}).get("warn_reject_share", WARN_REJECT_SHARE)
    stats: dict = {
        "out": str(run.out),
        "recipe": manifest.get("recipe", {}).get("name"),
        "warn_reject_share": threshold,
        "warnings": flag_stages(stages, threshold),
        "totals": {"input": kept_rows + rejected_rows, "kept": kept_rows, "rejected": rejected_rows,
                   "keep_rate": _ratio(kept_rows, kept_rows + rejected_rows)},
        "manifest_totals": manifest.get("totals", {}),
        "files": {"shards": len(run.shards), "rejects": len(run.rejects),
                  "shard_bytes": sum(int(s.get("bytes", 0)) for s in manifest.get("shards", []))},
        "columns": {"kept": sorted(run.kept_schema), "rejected": sorted(run.reject_schema)},
        "stages": stages,
        "timing": {"wall_s": manifest.get("wall_s"), **manifest.get("timing", {})},
        "reasons": reasons,
        "unique_uids": frames["unique_uids"].item(),
        "quantities": {},
        "lang": None,
        "dedup": _dedup(duplicates, manifest),
        "metaclip": _metaclip(run, frames.get("kept_entries")),
        "learned_filters": _learned_filters(stages, kept_rows + rejected_rows),
        "embeddings": {c: str(t) for c, t in run.kept_schema.items() if isinstance(t, pl.Array)},
        "against": compare_with_releases(run),  # None unless made with --against (issue 16)
    }
    for name, spec in quantities.items():
        entry = {"label": spec["label"], "stage_column": spec["stage_column"], "hist": None,
                 "kept": _group_summary(summary.get(True), name),
                 "rejected": _group_summary(summary.get(False), name)}
        stats["quantities"][name] = entry
    for name, hist in hists.items():
        stats["quantities"][name]["hist"] = hist
    if "lang" in frames:
        stats["lang"] = _langs(frames["lang"])
    stats["checks"] = _checks(run, stats)
    return _jsonable(stats)


def key_numbers(stats: dict) -> dict:
    """The few numbers a script wants (``curate stats --json``)."""
    quantities = stats["quantities"]
    clip = quantities.get("clip_score")
    return {
        "out": stats["out"],
        "totals": stats["totals"],
        "stages": [{k: s[k] for k in ("name", "type", "in", "kept", "rejected")} for s in stats["stages"]],
        "reasons": stats["reasons"],
        "warnings": stats["warnings"],
        "clip_score_kept": clip["kept"] if clip else None,
        "caption_words_kept_median": (quantities["caption_words"]["kept"] or {}).get("p50"),
        "langs_kept": dict([(k, n) for k, n in (stats["lang"] or {}).get("kept", {}).items() if n][:5]) or None,
        "duplicates": {k: v["duplicates"] for k, v in stats["dedup"].items()} or None,
        "metaclip_t": (stats["metaclip"] or {}).get("t"),
        "checks_ok": all(c["ok"] for c in stats["checks"]),
        "failed_checks": [c["name"] for c in stats["checks"] if not c["ok"]],
    }


def compare_runs(a: Run, b: Run, *, top: int = 10) -> dict:
    """Overlap of two runs over the same pool: kept in both, only in one, and why not."""
    kept_a = a.kept().select("uid")
    kept_b = b.kept().select("uid")
    queries = [
        kept_a.join(kept_b, on="uid", how="semi").select(pl.len()),
        kept_a.join(kept_b, on="uid", how="anti").join(b.rejected().select("uid", "reason"), on="uid")
        .group_by("reason").agg(pl.len()).sort("len", descending=True).head(top),
        kept_b.join(kept_a, on="uid", how="anti").join(a.rejected().select("uid", "reason"), on="uid")
        .group_by("reason").agg(pl.len()).sort("len", descending=True).head(top),
        kept_a.select(pl.len()),
        kept_b.select(pl.len()),
    ]
    both, a_only_why, b_only_why, n_a, n_b = pl.collect_all(queries)
    both, n_a, n_b = both.item(), n_a.item(), n_b.item()
    return _jsonable({
        "a": str(a.out), "b": str(b.out),
        "kept_both": both, "kept_only_a": n_a - both, "kept_only_b": n_b - both,
        "jaccard": _ratio(both, n_a + n_b - both),
        "only_a_rejected_in_b_by": _counts(a_only_why, "reason"),
        "only_b_rejected_in_a_by": _counts(b_only_why, "reason"),
    })


# ---------------------------------------------------------------- scanning


def _files(out: Path, manifest: dict, folder: str) -> list[Path]:
    listed = [out / entry["path"] for entry in manifest.get(folder, [])]
    on_disk = sorted((out / folder).glob("*.parquet")) if (out / folder).is_dir() else []
    seen = set(listed)
    return [p for p in listed if p.exists()] + [p for p in on_disk if p not in seen]


def _parse_reject(frame: pl.LazyFrame) -> pl.LazyFrame:
    """``"<stage>:<why>=<detail>"`` -> reason ``"<stage>:<why>"``, stage, detail."""
    return frame.with_columns(reject_parts())


def _schema(files: list[Path]) -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {}
    for path in files:
        for name, dtype in pl.read_parquet_schema(path).items():
            if schema.get(name, pl.Null) == pl.Null:  # an all-null column in one file says little
                schema[name] = dtype
    return schema


def _scan(files: list[Path], schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    if not files:
        return pl.LazyFrame(schema=schema)
    return pl.scan_parquet(files, schema=schema, missing_columns="insert", extra_columns="ignore")


def _rows(run: Run) -> pl.LazyFrame:
    """Kept and rejected rows stacked, with a ``kept`` flag and only the columns we use."""
    wanted = ["uid", "caption", "width", "height", "clip_score", "lang"]
    wanted += [c for c in _extra_numeric(run)]

    def side(frame: pl.LazyFrame, schema: dict, kept: bool) -> pl.LazyFrame:
        types = {**run.reject_schema, **run.kept_schema}
        cols = [pl.col(c) if c in schema else pl.lit(None, dtype=types[c]).alias(c)
                for c in wanted if c in types]
        return frame.select(pl.lit(kept).alias("kept"), *cols)

    return pl.concat([side(run.kept(), run.kept_schema, True),
                      side(run.rejected(), run.reject_schema, False)], how="vertical_relaxed")


def _extra_numeric(run: Run) -> list[str]:
    types = {**run.reject_schema, **run.kept_schema}
    return [c for c, t in types.items()
            if c not in KNOWN_COLUMNS and (t.is_numeric() or t == pl.Boolean) and not _is_identifier(c)]


def _is_identifier(column: str) -> bool:
    """Hashes and ids are numbers without a distribution worth plotting."""
    return "hash" in column or column.endswith("_id") or column in ("id", "key", "index")


def _quantities(run: Run) -> dict[str, dict]:
    """name -> how to compute it, label, binning rule."""
    specs: dict[str, dict] = {}
    if run.has("clip_score"):
        specs["clip_score"] = dict(expr=pl.col("clip_score").cast(pl.Float64), label="CLIP score",
                                   clip_q=None, integer=False, stage_column=True)
    specs["caption_chars"] = dict(expr=pl.col("caption").str.len_chars(), label="caption length (characters)",
                                  clip_q=0.995, integer=True, stage_column=False)
    specs["caption_words"] = dict(expr=pl.col("caption").str.count_matches(r"\S+"), label="caption words",
                                  clip_q=0.995, integer=True, stage_column=False)
    specs["width"] = dict(expr=pl.col("width"), label="image width (px)", clip_q=0.995, integer=True,
                          stage_column=False)
    specs["height"] = dict(expr=pl.col("height"), label="image height (px)", clip_q=0.995, integer=True,
                           stage_column=False)
    specs["log2_aspect"] = dict(
        expr=(pl.col("width").cast(pl.Float64) / pl.col("height").cast(pl.Float64)).log(2)
        .clip(-3.0, 3.0),
        label="aspect ratio width:height (log2)", clip_q=None, integer=False, stage_column=False,
        filter=(pl.col("width") > 0) & (pl.col("height") > 0))
    types = {**run.reject_schema, **run.kept_schema}
    for column in _extra_numeric(run):
        integer = types[column].is_integer() or types[column] == pl.Boolean
        specs[column] = dict(expr=pl.col(column).cast(pl.Float64), label=column, clip_q=0.995,
                             integer=integer, stage_column=True)
    for spec in specs.values():
        expr = spec["expr"]
        if "filter" in spec:
            expr = pl.when(spec.pop("filter")).then(expr)
        spec["expr"] = expr.cast(pl.Float64)
    return specs


def _range_exprs(quantities: dict) -> list[pl.Expr]:
    exprs = []
    for name, spec in quantities.items():
        e = pl.col(name).cast(pl.Float64)
        exprs += [e.min().alias(f"{name}__min"), e.max().alias(f"{name}__max")]
        if spec["clip_q"] is not None:
            exprs.append(e.quantile(spec["clip_q"], interpolation="higher").alias(f"{name}__hi"))
    return exprs


def _summary_exprs(quantities: dict) -> list[pl.Expr]:
    exprs = [pl.len().alias("__rows")]
    for name in quantities:
        e = pl.col(name).cast(pl.Float64)
        exprs += [
            e.count().alias(f"{name}__count"), e.mean().alias(f"{name}__mean"),
            e.min().alias(f"{name}__min"), e.max().alias(f"{name}__max"),
            e.quantile(0.05, interpolation="linear").alias(f"{name}__p05"),
            e.median().alias(f"{name}__p50"),
            e.quantile(0.95, interpolation="linear").alias(f"{name}__p95"),
        ]
    return exprs


def _bin_edges(name: str, spec: dict, ranges: dict, bins: int) -> dict | None:
    lo, top = ranges.get(f"{name}__min"), ranges.get(f"{name}__max")
    if lo is None or top is None:
        return None
    hi = ranges.get(f"{name}__hi", top)
    hi = top if hi is None else hi
    if spec["integer"] and hi - lo + 1 <= 2 * bins:
        lo, hi, count = lo - 0.5, hi + 0.5, int(hi - lo + 1)
    elif hi <= lo:
        lo, hi, count = lo - 0.5, lo + 0.5, 1
    else:
        count = bins
    step = (hi - lo) / count
    return {"lo": lo, "hi": hi, "count": count, "edges": [lo + i * step for i in range(count + 1)],
            "clipped_above": top > hi}


def _hist_counts(values: pl.DataFrame, name: str, binning: dict) -> pl.DataFrame:
    lo, hi, count = binning["lo"], binning["hi"], binning["count"]
    value = pl.col(name).cast(pl.Float64)
    bin_expr = ((value - lo) / (hi - lo) * count).floor().clip(0, count - 1).cast(pl.Int32)
    return (values.lazy().select("kept", bin_expr.alias("bin")).drop_nulls("bin")
            .group_by("kept", "bin").agg(pl.len()).collect())


def _hist_result(frame: pl.DataFrame, binning: dict) -> dict:
    count = binning["count"]
    out = {"edges": binning["edges"], "clipped_above": binning["clipped_above"],
           "kept": [0] * count, "rejected": [0] * count}
    for kept, index, n in frame.iter_rows():
        out["kept" if kept else "rejected"][index] += n
    return out


def _group_summary(row: dict | None, name: str) -> dict | None:
    if row is None or not row.get(f"{name}__count"):
        return None
    return {k: row[f"{name}__{k}"] for k in ("count", "mean", "min", "max", "p05", "p50", "p95")}


def _counts(frame: pl.DataFrame, key: str) -> dict:
    pairs = sorted(((k, n) for k, n in frame.iter_rows()), key=lambda kv: (-kv[1], str(kv[0])))
    return {str(k): int(n) for k, n in pairs}


def _stages(manifest: dict, rejected_in_files: dict) -> list[dict]:
    stages = []
    for stage in manifest.get("stages", []):
        reasons = {parse_reject(k).reason: int(v) for k, v in stage.get("reasons", {}).items()}
        stages.append({
            "name": stage.get("name"), "type": stage.get("type"),
            "in": int(stage.get("in", 0)), "kept": int(stage.get("kept", 0)),
            "rejected": int(stage.get("rejected", 0)), "reasons": reasons,
            "summary": stage.get("summary", {}),
            "rejected_in_files": int(rejected_in_files.get(stage.get("name"), 0)),
            "cost": stage.get("cost"),
        })
    return stages


LEARNED_FILTERS = ("clip_heads", "text_classes", "image_clusters")


def _learned_filters(stages: list[dict], pool: int) -> list[dict]:
    """What each head (clip_heads) and each DataComp filter (text_classes, image_clusters)
    removed: rows, share of the pool, share of the rows it received, and a head's cuts."""
    out = []
    for stage in (s for s in stages if s["type"] in LEARNED_FILTERS):
        received = stage["in"]
        if stage["type"] != "clip_heads":
            out.append({"stage": stage["name"], "filter": stage["type"], "removed": stage["rejected"],
                        "share_of_pool": _ratio(stage["rejected"], pool), "share_of_received":
                        _ratio(stage["rejected"], received)})
            continue
        for head in stage["summary"].get("heads", []):
            removed = sum(stage["reasons"].get(f"{stage['name']}:{head['name']}_{side}", 0)
                          for side in ("too_low", "too_high"))
            out.append({"stage": stage["name"], "filter": f"head {head['name']}", "column": head["column"],
                        "removed": removed, "share_of_pool": _ratio(removed, pool),
                        "share_of_received": _ratio(removed, received),
                        "min_score": head.get("min_score"), "max_score": head.get("max_score"),
                        "keep_top": head.get("keep_top"), "keep_bottom": head.get("keep_bottom")})
    return out


def _langs(frame: pl.DataFrame) -> dict:
    totals: dict[str, int] = {}
    split = {True: {}, False: {}}
    for kept, lang, n in frame.iter_rows():
        lang = "(not computed)" if lang is None else lang
        split[kept][lang] = split[kept].get(lang, 0) + n
        totals[lang] = totals.get(lang, 0) + n
    order = sorted(totals, key=lambda k: (-totals[k], k))
    head, tail = order[:TOP_LANGS], order[TOP_LANGS:]

    def fold(counts: dict) -> dict:
        out = {k: counts.get(k, 0) for k in head}
        if tail:
            out["(other)"] = sum(counts.get(k, 0) for k in tail)
        return out

    return {"kept": fold(split[True]), "rejected": fold(split[False]), "distinct": len(order)}


def _dedup(frame: pl.DataFrame, manifest: dict) -> dict:
    """Duplicate groups per dedup stage, from ``<stage>:duplicate_of=<uid>`` rejects.

    A group is a kept representative plus the rows that named it, so its size is
    duplicates + 1.
    """
    out: dict[str, dict] = {}
    sizes = (frame.with_columns((pl.col("duplicates") + 1).alias("size"))
             .group_by("stage", "size").agg(pl.len().alias("groups")).sort("stage", "size"))
    for stage, size, groups in sizes.iter_rows():
        entry = out.setdefault(stage, {"groups": 0, "duplicates": 0, "group_sizes": {}, "largest": []})
        entry["groups"] += groups
        entry["duplicates"] += groups * (size - 1)
        entry["group_sizes"][str(size)] = groups
    largest = frame.sort("duplicates", descending=True).group_by("stage", maintain_order=True).head(5)
    for stage, detail, duplicates in largest.select("stage", "detail", "duplicates").iter_rows():
        out[stage]["largest"].append({"uid": detail, "size": duplicates + 1})
    types = {s.get("name"): s.get("type", "") for s in manifest.get("stages", [])}
    for name, kind in types.items():
        if str(kind).startswith("dedup") and name not in out:
            out[name] = {"groups": 0, "duplicates": 0, "group_sizes": {}, "largest": [],
                         "note": "no duplicate_of=<uid> rejects"}
    for name in out:
        out[name]["type"] = types.get(name)
    return out


def _metaclip(run: Run, kept_entries: pl.DataFrame | None) -> dict | None:
    """Entry counts before/after balancing and t (MetaCLIP, Xu et al. 2023, Fig. 2)."""
    keys = [k for k in run.manifest.get("stats", {}) if k.endswith(".entry_counts")]
    if not keys:
        return None
    key = keys[0]
    label = key[: -len(".entry_counts")]
    path = run.out / run.manifest["stats"][key]
    if not path.exists():
        return {"label": label, "error": f"{path.name} listed in the manifest but missing"}
    counts = pl.read_parquet(path, columns=["entry_id", "entry", "count_before", "count_after"])
    t = next((s.get("summary", {}).get("t") for s in run.manifest.get("stages", [])
              if s.get("name") == label), None)
    ordered = counts.sort("count_before", descending=True)
    n = ordered.height
    ranks = sorted({min(n, max(1, round(math.exp(x * math.log(max(n, 1)) / (CURVE_POINTS - 1)))))
                    for x in range(CURVE_POINTS)}) if n else []
    picked = ordered[[r - 1 for r in ranks]] if ranks else ordered
    before, after = ordered["count_before"], ordered["count_after"]
    result = {
        "label": label, "t": t, "entries": n,
        "matched_before": int((before > 0).sum()), "matched_after": int((after > 0).sum()),
        "head_entries": int((before > t).sum()) if t is not None else None,
        "matches_before": int(before.sum()), "matches_after": int(after.sum()),
        "max_before": int(before.max() or 0), "max_after": int(after.max() or 0),
        "curve": {"rank": ranks, "before": picked["count_before"].to_list(),
                  "after": picked["count_after"].to_list()},
        "top": ordered.head(TOP_ENTRIES).select("entry", "count_before", "count_after").to_dicts(),
        "top_kept": None,
    }
    if kept_entries is not None:
        names = counts.select(pl.col("entry_id").cast(pl.Int64), "entry")
        joined = kept_entries.with_columns(pl.col("entry_id").cast(pl.Int64)).join(
            names, on="entry_id", how="left").sort("rows", descending=True)
        result["top_kept"] = joined.select("entry_id", "entry", "rows").to_dicts()
    return result


def _checks(run: Run, stats: dict) -> list[dict]:
    """The manifest against the files, and the accounting invariant."""
    manifest = run.manifest
    totals = manifest.get("totals", {})
    checks = []

    def check(name: str, ok: bool, detail: str):
        checks.append({"name": name, "ok": bool(ok), "detail": detail})

    files = stats["totals"]
    check("input = kept + rejected (manifest)",
          totals.get("input") == totals.get("kept", 0) + totals.get("rejected", 0),
          f"{totals.get('input')} = {totals.get('kept')} + {totals.get('rejected')}")
    check("manifest input rows = totals.input",
          manifest.get("input", {}).get("rows", totals.get("input")) == totals.get("input"),
          f"{manifest.get('input', {}).get('rows')} vs {totals.get('input')}")
    check("kept rows in shards = manifest", files["kept"] == totals.get("kept"),
          f"{files['kept']} in files, {totals.get('kept')} in manifest")
    check("rejected rows in rejects = manifest", files["rejected"] == totals.get("rejected"),
          f"{files['rejected']} in files, {totals.get('rejected')} in manifest")
    for folder in ("shards", "rejects"):
        listed = manifest.get(folder, [])
        bad = []
        for entry in listed:
            path = run.out / entry["path"]
            if not path.exists():
                bad.append(f"{entry['path']} missing")
            elif pq.ParquetFile(path).metadata.num_rows != entry.get("rows"):
                bad.append(f"{entry['path']} has {pq.ParquetFile(path).metadata.num_rows} rows, "
                           f"manifest says {entry.get('rows')}")
        on_disk = {p.relative_to(run.out).as_posix() for p in getattr(run, folder)}
        extra = sorted(on_disk - {e["path"] for e in listed})
        bad += [f"{p} not in manifest" for p in extra]
        check(f"{folder} files match manifest", not bad, "; ".join(bad[:5]) or f"{len(listed)} files")
    mismatched = [s["name"] for s in stats["stages"] if s["rejected"] != s["rejected_in_files"]]
    check("per-stage rejected = rejects files", not mismatched,
          ", ".join(mismatched) or f"{len(stats['stages'])} stages")
    manifest_reasons = {}
    for s in stats["stages"]:
        manifest_reasons.update(s["reasons"])
    check("reasons = rejects files", manifest_reasons == stats["reasons"],
          "" if manifest_reasons == stats["reasons"] else
          f"manifest {manifest_reasons} vs files {stats['reasons']}")
    chain = all(a["kept"] == b["in"] for a, b in zip(stats["stages"], stats["stages"][1:]))
    check("stage chain: each stage's in = previous kept", chain, "")
    check("uids unique", stats["unique_uids"] == files["input"],
          f"{stats['unique_uids']} distinct of {files['input']}")
    return checks


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _jsonable(value.item())
    return value
