"""The manifest: what ran, on what, and where every input row went.

Counts are read back from the written files (not from counters kept during the
run), so the manifest describes the output as it is on disk. The accounting
invariant ``input = kept + rejected`` and uid uniqueness are checked here.

Each stage entry also says what the stage cost (``cost``: worker-seconds, CPU and GPU
seconds, rows per worker-second, share of all stages' time) and, when it removed more
than the recipe's ``warn_reject_share`` of the rows it received, why (``warning``); the
top-level ``warnings`` lists those one per line; ``retryable`` counts the downloads that
failed for a reason that may pass, which the funnel hands to ``curate retry``.
``project_full_run`` turns a preview's costs into an estimate of the full input's wall time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import posixpath
from collections import Counter

from clipcurate.pipelines.download.fetch import is_transient
from clipcurate.pipelines.recipe import Recipe
from clipcurate.pipelines.stage import REJECT, Stage, parse_reject
from clipcurate.pipelines.storage import Storage

PACKAGES = ("clipcurate", "ray", "pyarrow", "polars", "img2dataset", "datasketch", "torch", "open_clip_torch",
            "pyahocorasick")


def build_manifest(*, output: Storage, recipe: Recipe, stages: list[Stage], index: dict, stats_files: dict,
                   recipe_source: str | None, wall_s: float, costs: dict[str, dict] | None = None,
                   timing: dict | None = None) -> dict:
    """``costs``: per stage label, what the runner measured (worker_s, cpu_s, gpu_s, fit_s,
    num_cpus, num_gpus, max_workers); ``timing``: wall seconds per phase and the capacity
    the run had (executor, cpus, gpus)."""
    shards = [_file_entry(output, "shards", f) for f in _names(output, "shards")]
    rejects = [_file_entry(output, "rejects", f) for f in _names(output, "rejects")]
    rejects_seen: Counter[str] = Counter()  # whole reject strings, details included
    uids: set[str] = set()
    rows_seen = 0
    for folder, entries in (("shards", shards), ("rejects", rejects)):
        for entry in entries:
            columns = ["uid", REJECT] if folder == "rejects" else ["uid"]
            table = output.read_parquet(output.path(entry["path"]), columns=columns)
            uids.update(table.column("uid").to_pylist())
            rows_seen += table.num_rows
            if folder == "rejects":
                rejects_seen.update(table.column(REJECT).to_pylist())
    reasons: Counter[str] = Counter()  # dedup_exact:duplicate_of=<uid> counts under dedup_exact:duplicate_of
    for value, n in rejects_seen.items():
        reasons[parse_reject(value).reason] += n
    kept = sum(e["rows"] for e in shards)
    rejected = sum(e["rows"] for e in rejects)
    if kept + rejected != index["rows"] or len(uids) != rows_seen:
        raise RuntimeError(
            f"accounting failed: input {index['rows']} rows, kept {kept} + rejected {rejected}, "
            f"{rows_seen - len(uids)} duplicated uids"
        )
    funnel = _funnel(stages, reasons, index["rows"], costs or {})
    return {
        "recipe": recipe.model_dump(),
        "recipe_path": recipe_source,
        "input": {"paths": index["paths"], "rows": index["rows"], "partitions": len(index["partitions"])},
        "seed": recipe.seed,
        "versions": _versions(),
        "stages": funnel,
        "totals": {"input": index["rows"], "kept": kept, "rejected": rejected},
        "warnings": flag_stages(funnel, recipe.warn_reject_share),
        "retryable": _retryable(rejects_seen, {s.label for s in stages if s.name == "download"}),
        "shards": shards,
        "rejects": rejects,
        "stats": stats_files,
        "wall_s": round(wall_s, 3),
        "timing": timing or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def is_retryable(reject: str, download_labels) -> bool:
    """Whether a reject is a download stage's failure that may pass when asked again
    (``fetch.is_transient``): the rows ``curate retry`` fetches again."""
    parsed = parse_reject(reject)
    return parsed.stage in download_labels and is_transient(reject[len(parsed.stage) + 1:])


def _retryable(rejects: Counter, download_labels: set[str]) -> dict:
    """Rows ``curate retry`` would fetch again, by whole reject string (a 429 apart from a 404)."""
    found = {value: n for value, n in sorted(rejects.items()) if is_retryable(value, download_labels)}
    return {"rows": sum(found.values()), "reasons": found}


def _funnel(stages: list[Stage], reasons: Counter, total: int, costs: dict[str, dict]) -> list[dict]:
    """Per-stage in/kept/rejected (and cost, where measured), in recipe order; the reader
    is the ``input`` stage."""
    entries, remaining = [], total
    labels = [("input", "input", None)] + [(s.label, s.name, s) for s in stages]
    known = {label for label, _, _ in labels}
    unknown = sorted({r for r in reasons if parse_reject(r).stage not in known})
    if unknown:
        raise RuntimeError(f"reject reasons from no stage of this recipe: {unknown[:3]}")
    all_worker_s = sum(cost["worker_s"] for cost in costs.values())
    for label, kind, stage in labels:
        mine = {r: n for r, n in sorted(reasons.items()) if parse_reject(r).stage == label}
        rejected = sum(mine.values())
        entry = {"name": label, "type": kind, "in": remaining, "kept": remaining - rejected,
                 "rejected": rejected, "reasons": mine}
        if stage is not None:
            entry["params"] = stage.config.model_dump(mode="json")
            summary = stage.summary() if hasattr(stage, "summary") else {}
            if summary:
                entry["summary"] = summary
        if label in costs:
            entry["cost"] = _cost_entry(costs[label], remaining, all_worker_s)
        entries.append(entry)
        remaining -= rejected
    return entries


def _cost_entry(cost: dict, rows: int, all_worker_s: float) -> dict:
    """A stage's cost with the figures to compare stages by: rows it received per
    worker-second, and its share of all stages' worker-seconds."""
    worker_s = cost["worker_s"]
    return {
        "rows": rows, "worker_s": round(worker_s, 4), "cpu_s": round(cost["cpu_s"], 4),
        "gpu_s": round(cost["gpu_s"], 4), "fit_s": round(cost["fit_s"], 4),
        "rows_per_s": round(rows / worker_s, 2) if worker_s > 0 else None,
        "share": round(worker_s / all_worker_s, 4) if all_worker_s > 0 else None,
        "num_cpus": cost["num_cpus"], "num_gpus": cost["num_gpus"], "max_workers": cost["max_workers"],
    }


# Reject reasons whose usual cause is a recipe setting: a warning over them says which.
# The reason strings stay as they are (the audit and `curate retry` read them).
REASON_FIXES = {
    "download:private_address": "hosts on private or loopback networks are refused; for a local web set "
                                "download.allow_private_networks: true, or allow exact endpoints with "
                                "download.private_allowlist: ['127.0.0.1:8000']",
}


def reason_fix(reason: str) -> str | None:
    """The recipe setting that would avoid a reject reason (``REASON_FIXES``), if any."""
    return REASON_FIXES.get(parse_reject(reason).reason)


def stage_warning(entry: dict, threshold: float) -> dict | None:
    """The warning for a funnel entry that removed more than ``threshold`` of the rows it
    received, with its top three reasons and the fix of those that have one; None
    otherwise. An unusual share is more often a wrong parameter or input column than a
    bad pool (DESIGN.md, "Curation is measured")."""
    if not entry["in"] or entry["rejected"] / entry["in"] <= threshold:
        return None
    share = entry["rejected"] / entry["in"]
    top = dict(sorted(entry["reasons"].items(), key=lambda kv: (-kv[1], kv[0]))[:3])
    reasons = ", ".join(f"{r.split(':', 1)[-1]}={n:,}" for r, n in top.items())
    fixes = "".join(f"; {fix}" for fix in dict.fromkeys(map(reason_fix, top)) if fix)
    return {
        "share_removed": round(share, 4), "threshold": threshold, "top_reasons": top,
        "message": f"{entry['name']} removed {share:.1%} of the {entry['in']:,} rows it received "
                   f"(warn_reject_share {threshold * 100:g}%): {reasons}{fixes}",
    }


def flag_stages(entries: list[dict], threshold: float) -> list[str]:
    """Set ``warning`` on each entry over ``threshold``; returns their one-line messages."""
    messages = []
    for entry in entries:
        warning = stage_warning(entry, threshold)
        if warning is not None:
            entry["warning"] = warning
            messages.append(warning["message"])
    return messages


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


def format_resume(resume: dict) -> str:
    """One line: what this run reused of earlier work on the same output."""
    if resume.get("finished"):
        return "resume: this output already holds the run of this input and recipe; nothing ran"
    parts = []
    if resume.get("phase1_rows_reused"):
        parts.append(f"{resume['phase1_rows_reused']:,} downloaded rows reused")
    if resume.get("phase1_dropped_blocks"):
        parts.append(f"{resume['phase1_dropped_blocks']} phase-1 blocks of another download recipe dropped")
    if resume.get("recomputed_from"):
        parts.append(f"recipe changed at {resume['recomputed_from']!r}: recomputed from there")
    return "resume: " + ("; ".join(parts) if parts else "fresh run")


def format_funnel(manifest: dict, output: str = "OUT") -> str:
    """The per-stage funnel as a plain-text table, for the end of a run: rows, the share
    each stage removed (``!``: over warn_reject_share, explained under the table), and its
    worker-seconds and rows per worker-second, which say which stage to scale; then the
    ``curate retry`` hint when some downloads failed for a reason that may pass."""
    lines = [f"{'stage':<22}{'in':>9}{'kept':>9}{'rejected':>10}{'removed':>9}{'worker_s':>10}{'rows/s':>10}"
             f"  reasons"]
    for stage in manifest["stages"]:
        cost = stage.get("cost") or {}
        name = stage["name"] + (" !" if stage.get("warning") else "")
        reasons = ", ".join(f"{r.split(':', 1)[1]}={n}" for r, n in stage["reasons"].items())
        lines.append(f"{name:<22}{stage['in']:>9}{stage['kept']:>9}{stage['rejected']:>10}"
                     f"{_percent(stage['rejected'], stage['in']):>9}{_figure(cost.get('worker_s')):>10}"
                     f"{_figure(cost.get('rows_per_s')):>10}  {reasons}")
    totals = manifest["totals"]
    worker_s = [s["cost"]["worker_s"] for s in manifest["stages"] if s.get("cost")]
    lines.append(f"{'total':<22}{totals['input']:>9}{totals['kept']:>9}{totals['rejected']:>10}"
                 f"{_percent(totals['rejected'], totals['input']):>9}{_figure(sum(worker_s) if worker_s else None):>10}")
    lines += [f"! {message}" for message in manifest.get("warnings", [])]
    hint = retry_hint(manifest, output)
    if hint:
        lines.append(hint)
    phases = manifest.get("timing", {}).get("phases_s")
    if phases:
        lines.append(f"wall {manifest['wall_s']:.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    return "\n".join(lines)


def retry_hint(manifest: dict, output: str = "OUT") -> str | None:
    """One line naming the transient download failures and the command that fetches only
    them again; None when there are none (a 404 or an opt-out will not change)."""
    retryable = manifest.get("retryable") or {}
    if not retryable.get("rows"):
        return None
    reasons = ", ".join(f"{value.split(':', 1)[1]} {n:,}" for value, n in retryable["reasons"].items())
    rows = retryable["rows"]
    plural = "s" if rows > 1 else ""
    return (f"retry: {rows:,} download{plural} failed for a reason that may pass ({reasons}); "
            f"`curate retry {output}` fetches only those again")


PROJECTION_FORMULA = ("overhead + ratio x (split + write) + sum over stages of ratio x ((worker_s - fit_s) "
                      "/ max_workers + fit_s), ratio = input rows / sample rows")


def project_full_run(manifest: dict, input_rows: int) -> dict:
    """Estimate the wall time of all ``input_rows`` from a preview's manifest.

    ratio = input rows / sample rows; each stage takes
    ratio x ((worker_s - fit_s) / max_workers + fit_s): its calls spread over the workers
    that fit on this machine or cluster at once, its fit once on the driver; the split and
    the write take ratio x their time; the overhead is the preview's wall time spent
    outside stage calls, split and write (Ray start, model loading, scheduling), counted
    once. An estimate: it assumes cost grows with rows (a fit may grow faster), every
    worker busy, and the sample's hosts as fast as the rest's."""
    ratio = input_rows / max(manifest["totals"]["input"], 1)
    timing = manifest.get("timing", {})
    phases = timing.get("phases_s", {})
    stages, worker_s = {}, 0.0
    for entry in manifest["stages"]:
        cost = entry.get("cost")
        if cost:
            worker_s += cost["worker_s"]
            spread = (cost["worker_s"] - cost["fit_s"]) / cost["max_workers"] + cost["fit_s"]
            stages[entry["name"]] = {"worker_s": cost["worker_s"], "max_workers": cost["max_workers"],
                                     "projected_s": round(ratio * spread, 3)}
    driver = phases.get("split", 0.0) + phases.get("write", 0.0)
    overhead = max(0.0, manifest["wall_s"] - driver - worker_s)
    total = overhead + ratio * driver + sum(s["projected_s"] for s in stages.values())
    return {
        "input_rows": input_rows, "sample_rows": manifest["totals"]["input"], "ratio": round(ratio, 3),
        "executor": timing.get("executor"), "cpus": timing.get("cpus"), "gpus": timing.get("gpus"),
        "stages": stages, "split_write_s": round(ratio * driver, 3), "overhead_s": round(overhead, 3),
        "wall_s": round(total, 3),  # a fast preview projects under 0.05 s: 1 decimal would say 0
        "formula": PROJECTION_FORMULA,
    }


def format_projection(preview: dict) -> str:
    """A preview's projection as plain text: one line per stage, then the estimate."""
    p = preview["projection"]
    lines = [f"preview: {preview['sample_rows']:,} of {p['input_rows']:,} input rows, drawn by uid hash "
             f"(x{p['ratio']:g} for the full input)",
             f"{'stage':<22}{'worker_s':>10}{'workers':>9}{'projected':>12}"]
    for name, stage in p["stages"].items():
        lines.append(f"{name:<22}{_figure(stage['worker_s']):>10}{stage['max_workers']:>9}"
                     f"{_duration(stage['projected_s']):>12}")
    lines.append(f"{'split + write':<22}{'':>19}{_duration(p['split_write_s']):>12}")
    lines.append(f"{'fixed overhead':<22}{'':>19}{_duration(p['overhead_s']):>12}")
    where = f"{p['executor']}, {p['cpus']:g} CPUs, {p['gpus']:g} GPUs"
    lines.append(f"projected wall time for all {p['input_rows']:,} rows here ({where}): "
                 f"~{_duration(p['wall_s'])} (an estimate: {p['formula']})")
    return "\n".join(lines)


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _figure(value) -> str:
    """Seconds or rates for a table, or ``-`` when not measured."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
