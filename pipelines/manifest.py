"""The manifest: what ran, on what, and where every input row went.

Counts are read back from the written files (not from counters kept during the
run), so the manifest describes the output as it is on disk. The accounting
invariant ``input = kept + rejected`` and uid uniqueness are checked here.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import posixpath
from collections import Counter

from pipelines.recipe import Recipe
from pipelines.stage import REJECT, Stage
from pipelines.storage import Storage

PACKAGES = ("clipcurate", "ray", "pyarrow", "polars", "img2dataset", "datasketch", "torch", "open_clip_torch",
            "pyahocorasick")


def reason_key(reject: str) -> str:
    """``dedup_exact:duplicate_of=<uid>`` counts under ``dedup_exact:duplicate_of``."""
    return reject.split("=", 1)[0]


def build_manifest(*, output: Storage, recipe: Recipe, stages: list[Stage], index: dict, stats_files: dict,
                   recipe_source: str | None, wall_s: float) -> dict:
    shards = [_file_entry(output, "shards", f) for f in _names(output, "shards")]
    rejects = [_file_entry(output, "rejects", f) for f in _names(output, "rejects")]
    reasons: Counter[str] = Counter()
    uids: set[str] = set()
    rows_seen = 0
    for folder, entries in (("shards", shards), ("rejects", rejects)):
        for entry in entries:
            columns = ["uid", REJECT] if folder == "rejects" else ["uid"]
            table = output.read_parquet(output.path(entry["path"]), columns=columns)
            uids.update(table.column("uid").to_pylist())
            rows_seen += table.num_rows
            if folder == "rejects":
                reasons.update(reason_key(r) for r in table.column(REJECT).to_pylist())
    kept = sum(e["rows"] for e in shards)
    rejected = sum(e["rows"] for e in rejects)
    if kept + rejected != index["rows"] or len(uids) != rows_seen:
        raise RuntimeError(
            f"accounting failed: input {index['rows']} rows, kept {kept} + rejected {rejected}, "
            f"{rows_seen - len(uids)} duplicated uids"
        )
    return {
        "recipe": recipe.model_dump(),
        "recipe_path": recipe_source,
        "input": {"paths": index["paths"], "rows": index["rows"], "partitions": len(index["partitions"])},
        "seed": recipe.seed,
        "versions": _versions(),
        "stages": _funnel(stages, reasons, index["rows"]),
        "totals": {"input": index["rows"], "kept": kept, "rejected": rejected},
        "shards": shards,
        "rejects": rejects,
        "stats": stats_files,
        "wall_s": round(wall_s, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _funnel(stages: list[Stage], reasons: Counter, total: int) -> list[dict]:
    """Per-stage in/kept/rejected, in recipe order; the reader is the ``input`` stage."""
    entries, remaining = [], total
    labels = [("input", "input", None)] + [(s.label, s.name, s) for s in stages]
    known = {label for label, _, _ in labels}
    unknown = sorted({r for r in reasons if r.split(":", 1)[0] not in known})
    if unknown:
        raise RuntimeError(f"reject reasons from no stage of this recipe: {unknown[:3]}")
    for label, kind, stage in labels:
        mine = {r: n for r, n in sorted(reasons.items()) if r.split(":", 1)[0] == label}
        rejected = sum(mine.values())
        entry = {"name": label, "type": kind, "in": remaining, "kept": remaining - rejected,
                 "rejected": rejected, "reasons": mine}
        if stage is not None:
            entry["params"] = stage.config.model_dump(mode="json")
            summary = stage.summary() if hasattr(stage, "summary") else {}
            if summary:
                entry["summary"] = summary
        entries.append(entry)
        remaining -= rejected
    return entries


def _names(output: Storage, folder: str) -> list[str]:
    return [posixpath.basename(p) for p in output.list_files(output.path(folder), ".parquet")]


def _file_entry(output: Storage, folder: str, name: str) -> dict:
    path = output.path(folder, name)
    digest = hashlib.sha256()
    size = 0
    with output.fs.open_input_stream(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"path": f"{folder}/{name}", "rows": output.parquet_rows(path), "bytes": size,
            "sha256": digest.hexdigest()}


def _versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def write_json_atomic(store: Storage, path: str, data: dict) -> None:
    store.write_bytes((json.dumps(data, indent=2, sort_keys=False) + "\n").encode(), path)


def format_funnel(manifest: dict) -> str:
    """The per-stage funnel as a plain-text table, for the end of a run."""
    lines = [f"{'stage':<22}{'in':>9}{'kept':>9}{'rejected':>10}  reasons"]
    for stage in manifest["stages"]:
        reasons = ", ".join(f"{r.split(':', 1)[1]}={n}" for r, n in stage["reasons"].items())
        lines.append(f"{stage['name']:<22}{stage['in']:>9}{stage['kept']:>9}{stage['rejected']:>10}  {reasons}")
    totals = manifest["totals"]
    lines.append(f"{'total':<22}{totals['input']:>9}{totals['kept']:>9}{totals['rejected']:>10}")
    return "\n".join(lines)
