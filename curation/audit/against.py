"""What an incremental run adds to the releases it was curated against (issue 16).

For a run made with ``curate run --against RELEASE`` (its manifest lists ``against``),
the audit answers three questions from columns only:

* **what is new**: the rows this run kept, and the union's size (release + new);
* **what came back**: new rows rejected as ``duplicate_of_release`` per dedup stage,
  pairs re-crawled with the same URL and caption (their uid is in a release), and what
  the blocklist refused, per kind;
* **how the entries moved** (when MetaCLIP continued from the releases): entries at t in
  the releases and in the union, the tail share (matches held by entries under t),
  entries the new rows covered for the first time, and those that grew most.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from clipcurate.curation.metaclip import t_to_p

TOP = 10


def compare_with_releases(run) -> dict | None:
    """``stats.json["against"]`` of a run (``curation.audit.stats.Run``); None for an ordinary run."""
    releases = run.manifest.get("against")
    if not releases:
        return None
    rejected = run.rejected().select("uid", "stage", "reason", "detail")
    came_back = (rejected.filter(pl.col("reason").str.ends_with(":duplicate_of_release"))
                 .group_by("stage").agg(pl.len()).collect())
    blocked = (rejected.filter(pl.col("stage").str.starts_with("blocklist"))
               .group_by("reason").agg(pl.len()).collect())
    kept = run.kept().select(pl.len()).collect().item()
    out = {
        "releases": [{"release": r["release"], "rows": r["rows"], "digest": r["digest"]} for r in releases],
        "kept_new": kept,
        "union_rows": kept + sum(r["rows"] for r in releases),
        "came_back_by_stage": dict(sorted(came_back.iter_rows(), key=lambda kv: -kv[1])),
        "came_back": int(came_back["len"].sum()) if came_back.height else 0,
        "blocked_by_reason": dict(sorted(blocked.iter_rows(), key=lambda kv: -kv[1])),
        "same_pair_recrawled": _recrawled(run, releases),
        "metaclip": _entries_moved(run),
    }
    return out


def _recrawled(run, releases: list[dict]) -> int:
    """Input rows of this run whose uid (url + caption) a release already holds."""
    uids = pl.concat([run.kept().select("uid"), run.rejected(parsed=False).select("uid")])
    shards = [p for r in releases for p in sorted((Path(r["release"]) / "shards").glob("*.parquet"))]
    if not shards:
        return 0
    earlier = pl.scan_parquet(shards).select("uid")
    return int(uids.join(earlier, on="uid", how="semi").select(pl.len()).collect().item())


def _entries_moved(run) -> dict | None:
    keys = [k for k in run.manifest.get("stats", {}) if k.endswith(".entry_counts")]
    if not keys:
        return None
    counts = pl.read_parquet(run.out / run.manifest["stats"][keys[0]])
    if "count_release" not in counts.columns:
        return None
    label = keys[0][: -len(".entry_counts")]
    stage = next((s for s in run.manifest.get("stages", []) if s.get("name") == label), {})
    t = (stage.get("summary") or {}).get("t")
    counts = counts.with_columns((pl.col("count_release") + pl.col("count_after")).alias("count_union"))
    release, union = counts["count_release"].to_numpy(), counts["count_union"].to_numpy()
    grown = counts.with_columns((pl.col("count_union") - pl.col("count_release")).alias("added")) \
        .sort("added", descending=True).head(TOP)
    return {
        "label": label, "t": t, "continued_from": (stage.get("summary") or {}).get("continued_from"),
        "entries_at_t_release": int((release >= t).sum()) if t else None,
        "entries_at_t_union": int((union >= t).sum()) if t else None,
        "tail_share_release": t_to_p(release, t) if t else None,
        "tail_share_union": t_to_p(union, t) if t else None,
        "entries_covered_release": int((release > 0).sum()),
        "entries_covered_union": int((union > 0).sum()),
        "entries_new": int(((release == 0) & (union > 0)).sum()),
        "max_union": int(union.max()) if len(union) else 0,
        "most_added": grown.select("entry", "count_release", "added", "count_union").to_dicts(),
    }
