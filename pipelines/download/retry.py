"""``curate retry OUT``: fetch again only the samples of a finished run that failed for a
reason that may pass (timeout, connect, dns, http_5xx, http_4xx=429).

A users' complaint about img2dataset is that a run with a flaky host can only be redone
whole. Here the run's phase-1 blocks (``OUT/_work/phase1``, every row after the per-sample
stages) already hold every answer; retry takes the transiently failed rows out of them and
lets the runner's resume do the rest: it re-fetches exactly the rows that are missing,
sends them through the same per-sample stages, then rebuilds shards, rejects and the
manifest (global stages such as dedup see the recovered rows too). Nothing else is fetched.

What the retry did is read back from the files, in two parts: the download's answer from
the rewritten phase-1 blocks (downloaded, or failed again by download reason), and, of the
rows downloaded, which are in the shards and which a later stage removed (by its reason).
A row missing from the shards is not a failed download.

Steps are recorded in ``OUT/_work/retry.json`` so an interrupted retry resumes when run again.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.lock import RunLock
from clipcurate.pipelines.manifest import format_funnel, is_retryable, write_json_atomic
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import WORK, RunOptions, run_pipeline
from clipcurate.pipelines.stage import REJECT, parse_reject
from clipcurate.pipelines.storage import Storage

HELP = (
    "Re-fetch only the samples of a finished run that failed for a transient reason (timeout, connect, "
    "dns, http_5xx, http_4xx=429), then rebuild its shards, rejects and manifest. Other rows are not "
    "fetched again. Needs the run's _work/ folder and its input files. Example: curate retry out/"
)
PLAN = "retry.json"
UIDS = "retry_uids.parquet"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="output folder or URI of a finished run (holds manifest.json and _work/)")
    parser.add_argument("--dry-run", action="store_true", help="count what would be retried; change nothing")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address to join (default: $RAY_ADDRESS, else an embedded Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all)")
    parser.add_argument("--inline", action="store_true", help="run stages in this process (debugging, small data)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    out = Storage.at(args.output)
    if not out.exists(out.path("manifest.json")) and not out.exists(out.child(WORK).path(PLAN)):
        raise UserError(f"{out.uri()}: no manifest.json, so not a finished run (finish it with 'curate run' first)")
    with RunLock(out, "retry"):  # the run it starts takes the same lock again (re-entrant)
        return _retry(args, out)


def _retry(args: argparse.Namespace, out: Storage) -> int:
    work = out.child(WORK)
    phase1 = work.path("phase1")
    plan_path, uids_path = work.path(PLAN), work.path(UIDS)
    manifest_path = out.path("manifest.json")
    if out.exists(manifest_path):
        manifest = out.read_json(manifest_path)
        plan = {
            "recipe": manifest["recipe"],
            "recipe_path": manifest.get("recipe_path"),
            "input": manifest["input"]["paths"],
            "labels": [s["name"] for s in manifest["stages"] if s.get("type") == "download"],
            "step": "select",
        }
    elif out.exists(plan_path):
        plan = out.read_json(plan_path)
        print(f"resuming an interrupted retry of {out.uri()}")
    else:
        raise UserError(f"{out.uri()}: no manifest.json, so not a finished run (finish it with 'curate run' first)")
    if not out.is_dir(phase1):
        raise UserError(f"{out.uri()}: no {WORK}/phase1 folder: this run's intermediate files are gone, so it "
                        f"cannot be retried in place")
    if not plan["labels"]:
        raise UserError(f"{out.uri()}: the recipe has no download stage; there is nothing to fetch again")
    recipe, stages = parse_recipe(plan["recipe"], source=plan.get("recipe_path") or "manifest.json recipe")

    if plan["step"] == "select":
        uids, reasons = _transient_rows(work, phase1, plan["labels"])
        summary = ", ".join(f"{reason}={n}" for reason, n in sorted(reasons.items())) or "none"
        print(f"{len(uids)} samples failed transiently ({summary})")
        if args.dry_run or not uids:
            print("nothing to retry" if not uids else "dry run: nothing changed")
            return 0
        work.write_parquet(pa.table({"uid": pa.array(sorted(uids), pa.string())}), uids_path)
        plan["step"] = "rewrite"
        write_json_atomic(work, plan_path, plan)
        out.fs.delete_file(manifest_path)
    elif args.dry_run:
        print("dry run: an interrupted retry is pending; run without --dry-run to finish it")
        return 0
    retry_uids = work.read_parquet(uids_path).column("uid").combine_chunks()
    if plan["step"] == "rewrite":
        _drop_rows(work, phase1, retry_uids)
        plan["step"] = "run"
        write_json_atomic(work, plan_path, plan)

    options = RunOptions(address=args.address, inline=args.inline, progress=not args.no_progress,
                         num_cpus=args.num_cpus)
    manifest = run_pipeline(recipe, stages, plan["input"], args.output, options,
                            recipe_source=plan.get("recipe_path"))
    outcome = retry_outcome(out, phase1, retry_uids, plan["labels"])
    work.fs.delete_file(plan_path)
    work.fs.delete_file(uids_path)
    print(format_funnel(manifest, args.output))
    print(outcome.format())
    return 0


@dataclass
class RetryOutcome:
    """What became of the re-fetched rows: the download's answer apart from what the
    stages after it decided."""

    fetched: int = 0
    downloaded: int = 0
    kept: int = 0
    removed: Counter = field(default_factory=Counter)  # "<stage>:<reason>" -> rows, of the downloaded
    failed: Counter = field(default_factory=Counter)  # "<download label>:<reason>[=detail]" -> rows

    def format(self) -> str:
        removed = sum(self.removed.values())
        lines = [f"retry: re-fetched {self.fetched:,} rows",
                 f"  downloaded OK {self.downloaded:,}: {self.kept:,} kept, {removed:,} removed by later stages"
                 + (f" ({_counts(self.removed)})" if removed else ""),
                 f"  failed again {sum(self.failed.values()):,}"
                 + (f" ({_counts(self.failed)})" if self.failed else "")]
        return "\n".join(lines)


def retry_outcome(out: Storage, phase1: str, uids: pa.Array, labels: list[str]) -> RetryOutcome:
    """Count the retried rows after the rerun: phase-1 blocks say what the download did
    (no reject, or a reject of a download stage); shards and rejects say where the
    downloaded rows went."""
    outcome = RetryOutcome()
    downloaded: list[pa.Array] = []
    for table in _rows_of(out, phase1, uids, [REJECT]):
        outcome.fetched += table.num_rows
        rejects = table.column(REJECT)
        failed = pc.fill_null(pc.is_in(rejects, value_set=_download_rejects(rejects, labels)), False)
        outcome.failed.update(dict(zip(*_value_counts(rejects.filter(failed)))))
        downloaded.append(table.filter(pc.invert(failed)).column("uid").combine_chunks())
    ok = pa.concat_arrays(downloaded) if downloaded else pa.array([], pa.string())
    outcome.downloaded = len(ok)
    outcome.kept = sum(t.num_rows for t in _rows_of(out, out.path("shards"), ok, []))
    for table in _rows_of(out, out.path("rejects"), ok, [REJECT]):
        for value, n in zip(*_value_counts(table.column(REJECT))):
            outcome.removed[parse_reject(value).reason] += n
    return outcome


def _download_rejects(rejects: pa.ChunkedArray, labels: list[str]) -> pa.Array:
    """The distinct reject values in ``rejects`` that a download stage wrote."""
    values = [v for v in pc.unique(rejects).to_pylist() if v is not None]
    return pa.array([v for v in values if parse_reject(v).stage in labels], pa.string())


def _rows_of(store: Storage, folder: str, uids: pa.Array, columns: list[str]):
    """Each parquet file's rows among ``uids``, with ``uid`` and ``columns``."""
    for path in store.list_files(folder, ".parquet"):
        table = store.read_parquet(path, columns=["uid", *columns])
        yield table.filter(pc.is_in(table.column("uid"), value_set=uids))


def _counts(counts: Counter) -> str:
    return ", ".join(f"{reason}={n:,}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _transient_rows(work: Storage, phase1: str, labels: list[str]) -> tuple[set[str], dict[str, int]]:
    """uids whose reject is a transient failure of a download stage, and counts by reason."""
    uids: set[str] = set()
    reasons: dict[str, int] = {}
    for path in work.list_files(phase1, ".parquet"):
        table = work.read_parquet(path, columns=["uid", REJECT])
        mask = _transient_mask(table.column(REJECT), labels)
        chosen = table.filter(mask)
        uids.update(chosen.column("uid").to_pylist())
        for reason, n in zip(*_value_counts(chosen.column(REJECT))):
            reasons[reason] = reasons.get(reason, 0) + n
    return uids, reasons


def _transient_mask(rejects: pa.ChunkedArray, labels: list[str]) -> pa.ChunkedArray:
    values = [v for v in pc.unique(rejects).to_pylist() if v is not None]
    transient = [v for v in values if is_retryable(v, labels)]
    return pc.is_in(rejects, value_set=pa.array(transient, pa.string()))


def _value_counts(values: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    counts = pc.value_counts(values)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def _drop_rows(work: Storage, phase1: str, uids: pa.Array) -> None:
    """Rewrite each phase-1 block without the rows to retry (atomically; idempotent)."""
    for path in work.list_files(phase1, ".parquet"):
        table = work.read_parquet(path)
        drop = pc.is_in(table.column("uid"), value_set=uids)
        if not pc.any(drop).as_py():
            continue
        keep = table.filter(pc.invert(drop))
        if keep.num_rows == 0:
            work.fs.delete_file(path)
        else:
            work.write_parquet(keep, path)
