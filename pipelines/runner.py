"""The runner: the only module that knows how stages execute (Ray Data or inline).

Plan of a run (DESIGN.md):
1. split the input into partitions once (``_work/input``), each row with its uid;
2. phase 1: per-sample stages up to the first global stage stream over the pending
   rows; each output block is written to ``_work/phase1`` by atomic rename under a
   name derived from its uids, so a rerun skips every row already written (no
   repeated downloads) and a retried task overwrites instead of duplicating;
3. phase 2: global stages (prepare -> fit -> apply) and the stages after them;
4. the writer splits kept rows into ``shards/`` and rejected rows (no image bytes)
   into ``rejects/``; the manifest is written last, after the accounting check.

Cost: each stage call is timed where it runs (wall and CPU seconds, model loading
excluded) and its seconds are spread over the call's rows as ``_cost_wall.<label>`` and
``_cost_cpu.<label>`` columns. They travel with the rows through Ray's batching, retries
and the phase-1 files (a resumed run keeps what earlier attempts spent), are summed on
the driver before the write, and the writer drops them (docs/architecture.md, "Where
the time goes").
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import posixpath
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from clipcurate.pipelines import fingerprint as fp
from clipcurate.pipelines import progress as live
from clipcurate.pipelines.console import ray_output_to, terminal
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.lock import LOCK_FILE, RunLock
from clipcurate.pipelines.manifest import build_manifest, project_full_run, write_json_atomic
from clipcurate.pipelines.readers import input_files, input_fingerprint, read_input_table, split_input
from clipcurate.pipelines.recipe import Recipe
from clipcurate.pipelines.release import NO_CONTEXT, RunContext, bind, open_context, with_releases
from clipcurate.pipelines.stage import GlobalStage, Resources, Stage, make_uid, set_column, unit_hash
from clipcurate.pipelines.storage import Storage, cache_dir
from clipcurate.pipelines.writer import COST_CPU, COST_WALL, OutputWriter, cost_columns, kept_rows

WORK = "_work"
RUN_FILE = "run.json"  # the fingerprint of the run the unfinished work belongs to
PHASE1_FILE = "_fingerprint.json"  # the phase-1 stages the blocks were made by
PREVIEW = "preview"  # the folder under --output that a --sample run writes
# Custom resource of the nodes that take CPU-only work (cluster.yaml gives it to the head
# and the CPU worker type). When a cluster has it, CPU work asks for a sliver of it, so
# it never runs on GPU nodes and leaves their CPUs to the GPU stages' actors.
CPU_NODE_RESOURCE = "curate_cpu"
CPU_NODE_SHARE = 0.001


@dataclass
class RunOptions:
    """How to execute: on Ray (embedded or ``address``) or inline in this process."""

    address: str | None = None
    inline: bool = False
    force: bool = False
    on_change: str = "recompute"  # unfinished work made under another recipe: "recompute" or "refuse"
    progress: bool = True  # the live view (pipelines/progress.py)
    quiet: bool = False  # Ray's own output to OUT/_work/ray.log instead of the terminal (the CLI's default)
    num_cpus: int | None = None
    release_cache: str | None = None  # where stages cache what they derive from --against releases (default OUT/_work/against)


def run_pipeline(recipe: Recipe, stages: list[Stage], input_spec, output: str | Storage,
                 options: RunOptions | None = None, recipe_source: str | None = None) -> dict:
    """Run ``stages`` over ``input_spec`` into ``output``; returns the manifest dict.

    ``output`` is a local folder, a URI of any pyarrow filesystem (``s3://bucket/run``)
    or a ``Storage``; on a cluster it must be a location every node can write (object
    storage, or a shared mount). One run at a time per output (``RunLock``)."""
    options = options or RunOptions()
    out = output if isinstance(output, Storage) else Storage.at(output)
    with RunLock(out):
        if options.force:
            _clear(out)
        with _ray_output(out, options):
            return _run_locked(recipe, stages, input_spec, out, options, recipe_source)


RAY_LOG = "ray.log"


@contextlib.contextmanager
def _ray_output(out: Storage, options: RunOptions):
    """``quiet``: Ray's output goes to ``OUT/_work/ray.log`` (a local file beside the
    object-store cache for remote outputs), named in one line on the terminal."""
    if not options.quiet or options.inline:
        yield
        return
    path = os.path.join(out.root, WORK, RAY_LOG) if out.local else \
        str(cache_dir(out.uri(), "logs") / RAY_LOG)
    with ray_output_to(path):
        print(f"Ray's logs: {path} (-v shows them here)", file=terminal(), flush=True)
        yield


def _run_locked(recipe: Recipe, stages: list[Stage], input_spec, out: Storage, options: RunOptions,
                recipe_source: str | None) -> dict:
    started = time.time()
    phases: dict[str, float] = {}
    context = open_context(recipe.against, options.release_cache or out.uri(out.path(WORK, "against")))
    bind(stages, context)
    fingerprint = run_fingerprint(recipe, stages, input_spec, context)
    if out.exists(out.path("manifest.json")):
        return _finished(out, fingerprint, recipe, input_spec)
    work = out.child(WORK)
    work.makedirs(work.root)
    resume = _check_recipe(work, fingerprint, options.on_change)
    with _timed(phases, "split"):
        index = split_input(input_spec, recipe.input, work)
    write_json_atomic(work, work.path(RUN_FILE), fingerprint)

    first_global = next((i for i, s in enumerate(stages) if s.is_global), len(stages))
    # phase 1 runs through the last checkpoint stage (the download) and keeps its output for
    # reruns; every later stage runs in phase 2 on each (re)run, so a changed filter needs no fetch
    checkpoint = max((i + 1 for i, s in enumerate(stages[:first_global]) if s.checkpoint), default=0)
    phase1_stages, phase2_stages = stages[:checkpoint], stages[checkpoint:]
    with _timed(phases, "start"):
        executor = InlineExecutor(out) if options.inline else RayExecutor(out, options)
        planned = {stage.label: executor.resources(stage) for stage in stages}  # before fit changes them

    view = live.RunProgress(ray_board=not options.inline, stream=terminal()) if options.progress else None
    try:
        phase1_dir = work.path("phase1")
        with _timed(phases, "phase1"):
            if phase1_stages:
                resume |= _check_phase1_fingerprint(work, phase1_dir, fingerprint["stages"][:checkpoint])
                pending, exclude = _pending_partitions(index, work, phase1_dir)
                to_fetch = _rows_in(work, pending)
                resume["phase1_rows_reused"] = index["rows"] - to_fetch + len(exclude)
                if pending:
                    if view:
                        view.start_phase("phase 1", [s.label for s in phase1_stages], to_fetch - len(exclude))
                    executor.run_phase1(pending, exclude, phase1_stages, phase1_dir)
                phase1_files = _check_phase1(index, work, phase1_dir)
            else:  # nothing to keep: phase 2 reads the input partitions
                phase1_files = [part["path"] for part in index["partitions"]]

        staging = work.path("final")
        work.rmtree(staging)
        with _timed(phases, "phase2"):
            if view:
                view.start_phase("phase 2", [s.label for s in phase2_stages], index["rows"])
            phase2 = executor.run_phase2(phase1_files, phase2_stages)
            seconds = executor.cost_totals(phase2)  # before the writer drops the cost columns
    finally:
        if view:
            view.close()

    with _timed(phases, "write"):
        executor.write(phase2, OutputWriter(out, staging, recipe.output.shard_rows))
        stats_files = _write_stats(phase2_stages, work, staging)
        for name in ("shards", "rejects", "stats"):
            out.move_files(posixpath.join(staging, name), out.path(name))
    manifest = build_manifest(
        output=out, recipe=recipe, stages=stages, index=index, stats_files=stats_files,
        recipe_source=recipe_source, wall_s=time.time() - started,
        costs=_stage_costs(stages, seconds, phase2.fit, planned, executor.capacity),
        timing={"phases_s": phases, **executor.capacity},
    )
    manifest["fingerprint"] = fingerprint
    manifest["resume"] = resume
    if context.releases:
        manifest["against"] = [r.describe() for r in context.releases]
    write_json_atomic(out, out.path("manifest.json"), manifest)
    work.rmtree(staging)
    return manifest


def run_preview(recipe: Recipe, stages: list[Stage], input_spec, output: str | Storage, sample_rows: int,
                options: RunOptions | None = None, recipe_source: str | None = None) -> dict:
    """Run ``stages`` on ``sample_rows`` input rows drawn at random and project the full run.

    The sample is the rows with the smallest ``unit_hash(uid, "preview", seed)``: uniform,
    the same on every call with the same input and recipe seed, and nested (a larger sample
    holds a smaller one). It runs into ``output/preview``, replaced on every call, so a
    preview never mixes with a full run's files. Returns the preview's manifest; its
    ``preview`` key holds the sample's size and ``project_full_run``'s estimate."""
    if sample_rows < 1:
        raise UserError(f"--sample {sample_rows}: give a number of rows above 0")
    out = (output if isinstance(output, Storage) else Storage.at(output)).child(PREVIEW)
    out.rmtree(out.root)
    sample = _sample_input(input_spec, recipe, sample_rows)
    sample_path = out.path(WORK, "sample.parquet")
    out.write_parquet(sample.rows, sample_path)
    # the sample holds the reader's normalised columns, in parquet
    as_read = recipe.input.model_copy(update={"format": "parquet", "url_col": "url", "caption_col": "caption"})
    manifest = run_pipeline(recipe.model_copy(update={"input": as_read}), stages, sample_path, out,
                            dataclasses.replace(options or RunOptions(), force=False), recipe_source)
    manifest["preview"] = {
        "input": {"paths": sample.paths, "rows": sample.input_rows},
        "sample_rows": sample.rows.num_rows,
        "projection": project_full_run(manifest, sample.input_rows),
    }
    write_json_atomic(out, out.path("manifest.json"), manifest)
    return manifest


# ------------------------------------------------------------------ preview sample


@dataclass
class _Sample:
    rows: pa.Table  # url, caption and the extra input columns, as the reader gives them
    input_rows: int
    paths: list[str]


def _sample_input(input_spec, recipe: Recipe, rows: int) -> _Sample:
    """The ``rows`` input rows with the smallest draws, reading one input file at a time
    (memory: the sample plus one file). The uid is the reader's: a hash of url + caption."""
    draw = "_preview_draw"
    paths = input_files(input_spec)
    chosen, total = None, 0
    for path in paths:
        table = read_input_table(path, recipe.input)
        total += table.num_rows
        uids = [make_uid(url or "", caption or "") for url, caption in
                zip(table.column("url").to_pylist(), table.column("caption").to_pylist())]
        table = table.append_column(draw, pa.array(unit_hash(uids, PREVIEW, recipe.seed)))
        chosen = table if chosen is None else pa.concat_tables([chosen, table], promote_options="permissive")
        chosen = chosen.take(pc.select_k_unstable(chosen, min(rows, chosen.num_rows), [(draw, "ascending")]))
    return _Sample(chosen.sort_by(draw).drop_columns([draw]), total, paths)


# ------------------------------------------------------------------ run bookkeeping: resume, phases, costs


def run_fingerprint(recipe: Recipe, stages: list[Stage], input_spec, context: RunContext = NO_CONTEXT) -> dict:
    """What this run's output is a function of: the input files and how they are read,
    the recipe seed, and each stage up to itself (``pipelines/fingerprint.py``); with
    ``--against``, the earlier releases, from the first global stage on (``pipelines/release.py``)."""
    source = input_fingerprint(input_spec, recipe.input)
    fingerprint = {"input": fp.digest(source), "seed": recipe.seed,
                   "stages": with_releases(fp.chain(source, stages), stages, context)}
    if context.releases:
        fingerprint["against"] = [r.digest for r in context.releases]
    return fingerprint


def _clear(out: Storage) -> None:
    """``--force``: delete everything in the output but the lock this run holds."""
    for info in out.fs.get_file_info(pafs.FileSelector(out.root, allow_not_found=True)):
        if info.base_name == LOCK_FILE:
            continue
        if info.type == pafs.FileType.Directory:
            out.fs.delete_dir(info.path)
        else:
            out.fs.delete_file(info.path)


def _finished(out: Storage, fingerprint: dict, recipe: Recipe, input_spec) -> dict:
    """A finished output: the same input and recipe is nothing to do; anything else is
    refused (a finished run is a published result: only --force replaces it), naming
    what differs: the recipe keys (the input's too: ``input.partition_size``), else the
    input files, else the stage whose named files changed."""
    manifest = out.read_json(out.path("manifest.json"))
    recorded = manifest.get("fingerprint")
    if recorded == fingerprint:
        return manifest | {"resume": {"finished": True}}
    if recorded is None:
        raise UserError(f"{out.uri()}: already holds a finished run made by an older version; "
                        f"use --force or a new --output")
    changes = fp.differences(manifest.get("recipe") or {}, recipe.model_dump(mode="json"))
    if recorded["input"] != fingerprint["input"] and not any(c.startswith("input.") for c in changes):
        same_files = manifest.get("input", {}).get("paths") == input_files(input_spec)
        changes.append("input files: " + ("changed since (size or time)" if same_files else "other files"))
    if not changes:
        changed = fp.first_change(recorded["stages"], fingerprint["stages"])
        changes.append(f"stage {changed!r}: a file its parameters name changed" if changed
                       else "the --against releases changed")
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    raise UserError(f"{out.uri()}: already holds a finished run that differs in {shown}; "
                    f"use --force or a new --output")


def _check_recipe(work: Storage, fingerprint: dict, on_change: str) -> dict:
    """Compare with the recipe the unfinished work was made under (``_work/run.json``,
    written once the input is split). ``refuse`` stops on any change; ``recompute``
    (default) goes on and redoes the work from the first changed stage. The input is
    checked by ``split_input``."""
    path = work.path(RUN_FILE)
    resume: dict = {}
    if work.exists(path):
        recorded = work.read_json(path)
        changed = fp.first_change(recorded["stages"], fingerprint["stages"]) \
            if recorded["input"] == fingerprint["input"] else None
        if changed is None and recorded.get("seed") != fingerprint["seed"]:
            changed = "seed"
        if changed is not None:
            if on_change == "refuse":
                raise UserError(f"{work.uri()}: unfinished work made under another recipe (first change: "
                                f"{changed!r}); rerun with --on-change recompute to redo from there, "
                                f"--force to start over, or use a new --output")
            resume["recomputed_from"] = changed
    return resume


def _check_phase1_fingerprint(work: Storage, phase1_dir: str, chain: list[dict]) -> dict:
    """Phase-1 blocks made by other phase-1 stages (the download's parameters changed)
    are dropped: they are not this recipe's work."""
    path = posixpath.join(phase1_dir, PHASE1_FILE)
    if work.exists(path) and work.read_json(path) == chain:
        return {}
    stale = work.list_files(phase1_dir, ".parquet")
    work.rmtree(phase1_dir)
    work.makedirs(phase1_dir)
    write_json_atomic(work, path, chain)
    return {"phase1_dropped_blocks": len(stale)} if stale else {}


def _rows_in(work: Storage, paths: list[str]) -> int:
    return sum(work.parquet_rows(p) for p in paths)


def _pending_partitions(index: dict, work: Storage, phase1_dir: str) -> tuple[list[str], list[str]]:
    """Input partitions with rows not yet in phase 1, and the uids already done."""
    done = set()
    for path in work.list_files(phase1_dir, ".parquet"):
        done.update(work.read_parquet(path, columns=["uid"]).column("uid").to_pylist())
    pending, exclude = [], []
    for part in index["partitions"]:
        uids = work.read_parquet(part["path"], columns=["uid"]).column("uid").to_pylist()
        finished = [u for u in uids if u in done]
        if len(finished) < len(uids):
            pending.append(part["path"])
            exclude.extend(finished)
    return pending, exclude


def _check_phase1(index: dict, work: Storage, phase1_dir: str) -> list[str]:
    """Every input row is in phase 1 exactly once; otherwise fail loudly."""
    files = work.list_files(phase1_dir, ".parquet")
    seen: set[str] = set()
    for path in files:
        uids = work.read_parquet(path, columns=["uid"]).column("uid").to_pylist()
        twice = seen.intersection(uids)
        if twice or len(set(uids)) != len(uids):
            raise RuntimeError(f"phase 1 wrote uid {sorted(twice)[:1]} twice ({path}); rerun with --force")
        seen.update(uids)
    if len(seen) != index["rows"]:
        raise RuntimeError(f"phase 1 holds {len(seen)} rows for {index['rows']} input rows")
    return files


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str):
    """Wall seconds of one phase of this attempt, into ``phases[name]``."""
    started = time.perf_counter()
    yield
    phases[name] = round(time.perf_counter() - started, 3)


def _write_stats(stages: list[Stage], work: Storage, staging: str) -> dict[str, str]:
    files = {}
    for stage in stages:
        if not isinstance(stage, GlobalStage):
            continue
        for key, table in stage.stats().items():
            name = f"{stage.label}.{key}"
            work.write_parquet(table, posixpath.join(staging, "stats", name + ".parquet"))
            files[name] = f"stats/{name}.parquet"
    return files


def _stage_costs(stages: list[Stage], seconds: dict[str, float], fits: dict[str, _Seconds],
                 planned: dict[str, Resources], capacity: dict) -> dict[str, dict]:
    """Per stage: seconds of its calls (summed cost columns) plus its fit on the driver,
    GPU-seconds (call seconds x the GPUs a worker holds), and how many of its workers fit
    on this machine or cluster at once (for the preview's projection)."""
    costs = {}
    for stage in stages:
        resources, fit = planned[stage.label], fits.get(stage.label, _Seconds())
        calls = seconds.get(COST_WALL + stage.label, 0.0)
        costs[stage.label] = {
            "worker_s": calls + fit.wall, "cpu_s": seconds.get(COST_CPU + stage.label, 0.0) + fit.cpu,
            "gpu_s": calls * resources.num_gpus, "fit_s": fit.wall, "num_cpus": resources.num_cpus,
            "num_gpus": resources.num_gpus, "max_workers": _max_workers(resources, capacity),
        }
    return costs


def _max_workers(resources: Resources, capacity: dict) -> int:
    """GPUs / num_gpus for a GPU stage, else CPUs / num_cpus; at most a fixed pool's size."""
    if resources.num_gpus > 0:
        fit = capacity["gpus"] / resources.num_gpus
    else:
        fit = capacity["cpus"] / max(resources.num_cpus, 0.001)
    if resources.concurrency:
        fit = min(fit, resources.concurrency)
    return max(1, int(fit))


# ------------------------------------------------------------------ shared block helpers


@dataclass(frozen=True)
class _Seconds:
    wall: float = 0.0
    cpu: float = 0.0


class _Stopwatch:
    """Wall and CPU seconds of this process since it was made: one stage call, one fit."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> _Seconds:
        return _Seconds(time.perf_counter() - self.wall, time.process_time() - self.cpu)


def apply_stage(stage: Stage, batch: pa.Table) -> pa.Table:
    stage.ensure_setup()
    watch = _Stopwatch()
    out = stage(batch)
    spent = watch.elapsed()
    if out.num_rows != batch.num_rows:
        raise RuntimeError(f"stage {stage.label} returned {out.num_rows} rows for {batch.num_rows}")
    live.report(stage.label, out)
    return _charge(out, stage.label, spent)


def prepare_stage(stage: GlobalStage, batch: pa.Table) -> pa.Table:
    stage.ensure_setup()
    watch = _Stopwatch()
    out = stage.prepare(batch)
    spent = watch.elapsed()
    if out.num_rows != batch.num_rows:
        raise RuntimeError(f"stage {stage.label} prepare returned {out.num_rows} rows for {batch.num_rows}")
    return _charge(out, stage.label, spent)


def _fit(stage: GlobalStage, kept) -> _Seconds:
    """``stage.fit`` on the driver, timed: its seconds count as the stage's."""
    live.note(stage.label, "fitting on the driver")
    watch = _Stopwatch()
    stage.fit(kept)
    spent = watch.elapsed()
    live.note(stage.label, f"fitted in {spent.wall:.1f} s")
    return spent


def _charge(batch: pa.Table, label: str, spent: _Seconds) -> pa.Table:
    """Spread one call's seconds evenly over its rows (adding to what the stage's prepare
    call charged them): the cost goes wherever Ray sends the rows, and a retried task
    charges its rows once, as it writes them once."""
    rows = max(batch.num_rows, 1)
    for prefix, seconds in ((COST_WALL, spent.wall), (COST_CPU, spent.cpu)):
        name = prefix + label
        charged = pa.array(np.full(batch.num_rows, seconds / rows))
        if name in batch.column_names:
            charged = pc.add(pc.fill_null(batch.column(name), 0.0), charged)
        batch = set_column(batch, name, charged)
    return batch


def cost_sums(batch: pa.Table) -> pa.Table:
    """A block's cost columns summed, one row per column (the same schema for every block)."""
    names = cost_columns(batch)
    return pa.table({"column": pa.array(names, pa.string()),
                     "seconds": pa.array([pc.sum(batch.column(n)).as_py() or 0.0 for n in names], pa.float64())})


def _add_up(sums: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for row in sums:
        totals[row["column"]] = totals.get(row["column"], 0.0) + row["seconds"]
    return totals


def write_block(batch: pa.Table, store: Storage, out_dir: str) -> pa.Table:
    """Write one phase-1 block atomically, named by a hash of its uids (a retried task
    overwrites its own file instead of adding a second copy of its rows)."""
    uids = batch.column("uid").to_pylist()
    if not uids:
        return pa.table({"file": pa.array([], pa.string()), "rows": pa.array([], pa.int64())})
    digest = hashlib.blake2b("\n".join(uids).encode(), digest_size=10).hexdigest()
    path = posixpath.join(out_dir, f"block-{digest}.parquet")
    store.write_parquet(batch, path)
    return pa.table({"file": [path], "rows": [len(uids)]})


def drop_uids(batch: pa.Table, exclude: pa.Array) -> pa.Table:
    return batch.filter(pc.invert(pc.is_in(batch.column("uid"), value_set=exclude)))


def _needs_actor(stage: Stage, resources: Resources) -> bool:
    """Actors only where a stage loads something in setup() or needs a GPU."""
    return resources.num_gpus > 0 or resources.concurrency is not None or type(stage).setup is not Stage.setup


@dataclass
class _Phase2:
    """Phase 2's rows, materialised (a Ray Dataset, or a table inline), and each global
    stage's fit time on the driver."""

    rows: object
    fit: dict[str, _Seconds]


# ------------------------------------------------------------------ inline executor


class InlineExecutor:
    """Runs every stage in this process over pyarrow tables: for debugging and tests.

    Global stages still fit through a small local Ray Dataset (their ``fit`` contract).
    """

    def __init__(self, store: Storage):
        self.store = store
        self.capacity = {"executor": "inline", "cpus": 1, "gpus": 0}

    def resources(self, stage: Stage) -> Resources:
        return stage.resources()

    def run_phase1(self, pending: list[str], exclude: list[str], stages: list[Stage], out_dir: str) -> None:
        exclude_array = pa.array(exclude, pa.string())
        for path in pending:
            table = drop_uids(self.store.read_parquet(path), exclude_array)
            for stage in stages:
                table = _in_batches(table, stage.resources().batch_size, functools.partial(apply_stage, stage))
            write_block(table, self.store, out_dir)

    def run_phase2(self, files: list[str], stages: list[Stage]) -> _Phase2:
        table = pa.concat_tables([self.store.read_parquet(f) for f in files], promote_options="permissive")
        fit = {}
        for stage in stages:
            if stage.is_global:
                table = _in_batches(table, stage.resources().batch_size, functools.partial(prepare_stage, stage))
                import ray.data

                fit[stage.label] = _fit(stage, ray.data.from_arrow(kept_rows(table)))
            table = _in_batches(table, stage.resources().batch_size, functools.partial(apply_stage, stage))
        return _Phase2(table, fit)

    def cost_totals(self, phase2: _Phase2) -> dict[str, float]:
        return _add_up(cost_sums(phase2.rows).to_pylist())

    def write(self, phase2: _Phase2, writer: OutputWriter) -> None:
        writer.write_table(phase2.rows)


def _in_batches(table: pa.Table, batch_size: int | None, fn) -> pa.Table:
    """``fn`` over slices of ``batch_size`` rows (None: the whole table), concatenated."""
    size = batch_size or max(table.num_rows, 1)
    pieces = [fn(table.slice(start, size)) for start in range(0, table.num_rows, size)]
    return pa.concat_tables(pieces, promote_options="permissive") if pieces else table


# ------------------------------------------------------------------ Ray executor


class _StageActor:
    """One actor of a model stage's pool: ``setup()`` once, then batches."""

    def __init__(self, stage: Stage, method: str = "__call__"):
        self.stage = stage
        self.stage.ensure_setup()
        self.method = method

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.method == "prepare":
            return prepare_stage(self.stage, batch)
        return apply_stage(self.stage, batch)


def _stage_resources(stage: Stage) -> Resources:
    return stage.resources()


class RayExecutor:
    """Runs stages as Ray Data ``map_batches`` operators: tasks, or actor pools for
    stages with a model/automaton or a GPU.

    Placement on a cluster: stages that ask for GPUs land on GPU nodes (Ray schedules
    ``num_gpus``); everything else asks for a sliver of ``CPU_NODE_RESOURCE`` when the
    cluster has nodes with it, so CPU work stays off the GPU nodes. A model stage decides
    on its device where it is asked; when this driver has no GPU but the cluster has,
    the runner asks it on a GPU node (a stage that picks CUDA when one is visible then
    asks for a GPU there, as it would on a single GPU machine).

    CPU budget: every actor pool of one streaming plan holds its CPUs for the whole
    plan, so on a small machine (two actor stages at 1 CPU on 2 CPUs, plus the read
    tasks) the plan would wait forever for a CPU. The CPU requests of a plan are scaled
    down together until one actor of every pool and one task fit on the smallest CPU
    node, wherever Ray places the actors; on nodes with many cores the share is 1 and
    requests are the stages' own. Autoscaling pools grow to one actor per CPU on one
    machine; on a cluster, only as far as leaves one task's CPUs free: when a node dies,
    Ray rebuilds its lost blocks by re-running tasks, and pools that had filled the
    replacement node would leave those tasks nowhere to run (``_budget``). On one
    machine there is no other node to lose.
    """

    def __init__(self, store: Storage, options: RunOptions):
        import ray

        self.ray = ray
        self.store = store
        if not ray.is_initialized():
            address = options.address or os.environ.get("RAY_ADDRESS")
            # quiet: workers' prints stay in Ray's session logs (the driver would echo them to stdout)
            kwargs = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": not options.quiet}
            if address:
                ray.init(address=address, **kwargs)
            else:
                # 'local': a fresh embedded Ray, never another program's cluster
                ray.init(address='local', num_cpus=options.num_cpus, **kwargs)
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours (pipelines/progress.py) show stages, not operators
        context.print_on_execution_start = options.progress
        if not options.progress:  # quiet runs (the demo, scripts): no per-dataset INFO lines
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        cluster = ray.cluster_resources()
        self.cpu_placement = {CPU_NODE_RESOURCE: CPU_NODE_SHARE} if cluster.get(CPU_NODE_RESOURCE) else None
        cpu_nodes = _cpu_node_sizes(ray, tagged=self.cpu_placement is not None)
        self.node_cpus, self.cpu_capacity = min(cpu_nodes), sum(cpu_nodes)
        self.multi_node = sum(1 for n in ray.nodes() if n["Alive"]) > 1
        self.gpus_elsewhere = cluster.get("GPU", 0) > 0 and _driver_node_gpus(ray) == 0
        self.capacity = {"executor": "ray", "cpus": self.cpu_capacity, "gpus": cluster.get("GPU", 0)}
        self._resources: dict[int, Resources] = {}

    def resources(self, stage: Stage) -> Resources:
        """What one worker of ``stage`` needs on this cluster (asked once per stage, and
        again after its ``fit``)."""
        if id(stage) not in self._resources:
            resources = stage.resources()
            if resources.num_gpus == 0 and self.gpus_elsewhere and _needs_actor(stage, resources):
                probe = self.ray.remote(num_cpus=0, num_gpus=0.01)(_stage_resources)
                resources = self.ray.get(probe.remote(stage))
            self._resources[id(stage)] = resources
        return self._resources[id(stage)]

    def _on_gpu_nodes(self, resources: Resources) -> bool:
        return bool(resources.num_gpus) and self.cpu_placement is not None

    def _budget(self, stages: list[Stage]) -> "_Budget":
        """The CPU share and the autoscaling pools' size limit of one streaming plan."""
        fixed, growing, task = 0.0, 0.0, 1.0  # read, bookkeeping and write tasks ask for 1 CPU
        for stage in stages:
            resources = self.resources(stage)
            if self._on_gpu_nodes(resources):
                continue
            if not _needs_actor(stage, resources):
                task = max(task, resources.num_cpus)
            elif resources.concurrency:
                fixed += resources.num_cpus * resources.concurrency
            else:
                growing += resources.num_cpus
        share = min(1.0, self.node_cpus / (fixed + growing + task))
        share = max(int(share * 1000) / 1000, 0.001)
        if not self.multi_node:
            return _Budget(share, max(1, int(self.cpu_capacity)))
        # leave one task's CPUs for rebuilding lost blocks: see the class docstring
        pool_size = int((self.cpu_capacity / share - task - fixed) / growing) if growing else 1
        return _Budget(share, max(1, pool_size))

    def _cpu_args(self, share: float) -> dict:
        args = {"num_cpus": share}
        if self.cpu_placement:
            args["resources"] = self.cpu_placement
        return args

    def _map(self, ds, stage: Stage, budget: "_Budget", method: str = "__call__"):
        resources = self.resources(stage)
        share = budget.share
        common = dict(batch_format="pyarrow", batch_size=resources.batch_size, zero_copy_batch=True)
        if self._on_gpu_nodes(resources):
            common.update(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)
        else:
            common.update(num_cpus=resources.num_cpus * share)
            if resources.num_gpus:
                common["num_gpus"] = resources.num_gpus
            if self.cpu_placement:
                common["resources"] = self.cpu_placement
        if _needs_actor(stage, resources):
            size = resources.concurrency
            pool = self.ray.data.ActorPoolStrategy(size=size) if size else \
                self.ray.data.ActorPoolStrategy(min_size=1, max_size=budget.pool_size)
            return ds.map_batches(
                _StageActor,
                fn_constructor_kwargs={"stage": stage, "method": method},
                compute=pool,  # spread over the nodes (Ray Data's default strategy): their NICs and memory
                **common,
            )
        # a task takes whole blocks and slices them itself: with a batch_size Ray Data
        # would not fuse the task into the read (or bookkeeping) task before it
        fn = functools.partial(prepare_stage if method == "prepare" else apply_stage, stage)
        common["batch_size"] = None
        return ds.map_batches(functools.partial(_in_batches, batch_size=resources.batch_size, fn=fn), **common)

    def _map_blocks(self, ds, fn, share: float):
        """A whole-block bookkeeping step (filter, write) on the CPU nodes."""
        return ds.map_batches(fn, batch_format="pyarrow", batch_size=None, **self._cpu_args(share))

    def _read(self, paths: list[str], share: float):
        """One read task, and one block, per parquet file, with this plan's CPU share.

        Not ``read_parquet``: its file-listing step asks for a whole CPU that no
        argument lowers, and waits forever when actor pools already hold the rest."""
        return self.ray.data.read_datasource(_parquet_files(paths, self.store), override_num_blocks=max(1, len(paths)),
                                             **self._cpu_args(share))

    def run_phase1(self, pending: list[str], exclude: list[str], stages: list[Stage], out_dir: str) -> None:
        budget = self._budget(stages)
        ds = self._read(pending, budget.share)
        if exclude:
            ds = self._map_blocks(ds, functools.partial(drop_uids, exclude=pa.array(exclude, pa.string())),
                                  budget.share)
        for stage in stages:
            ds = self._map(ds, stage, budget)
        written = self._map_blocks(ds, functools.partial(write_block, store=self.store, out_dir=out_dir),
                                   budget.share)
        written.take_all()

    def run_phase2(self, files: list[str], stages: list[Stage]) -> _Phase2:
        apply_budget, prepare_budget = self._phase2_budgets(stages)
        first = prepare_budget.get(0) or apply_budget.get(0) or _Budget(1.0, 1)
        ds = self._read(files, first.share)
        fit = {}
        for i, stage in enumerate(stages):
            if stage.is_global:
                ds = self._map(ds, stage, prepare_budget[i], method="prepare").materialize()
                fit[stage.label] = _fit(stage, self._map_blocks(ds, kept_rows, 1.0))
                # a fitted stage may need less (clip_score's keep_top compares stored scores: no model)
                self._resources.pop(id(stage), None)
                apply_budget, _ = self._phase2_budgets(stages)
            ds = self._map(ds, stage, apply_budget[i])
        return _Phase2(ds.materialize(), fit)

    def cost_totals(self, phase2: _Phase2) -> dict[str, float]:
        return _add_up(self._map_blocks(phase2.rows, cost_sums, 1.0).take_all())

    def write(self, phase2: _Phase2, writer: OutputWriter) -> None:
        writer.write_dataset(phase2.rows, lambda ds, fn: self._map_blocks(ds, fn, 1.0), self._cpu_args(1.0))

    def _phase2_budgets(self, stages: list[Stage]) -> tuple[dict[int, "_Budget"], dict[int, "_Budget"]]:
        """Phase 2 is one plan per global stage: from the previous global stage's apply
        to this one's prepare (then a materialize); the last runs to the end."""
        apply_budget: dict[int, _Budget] = {}
        prepare_budget: dict[int, _Budget] = {}
        window: list[int] = []
        for i, stage in enumerate(stages):
            if stage.is_global:
                budget = self._budget([stages[j] for j in window] + [stage])
                apply_budget.update({j: budget for j in window})
                prepare_budget[i] = budget
                window = []
            window.append(i)
        budget = self._budget([stages[j] for j in window])
        apply_budget.update({j: budget for j in window})
        return apply_budget, prepare_budget


@dataclass(frozen=True)
class _Budget:
    share: float  # factor for every CPU request of the plan
    pool_size: int  # most actors of an autoscaling pool


def _parquet_files(paths: list[str], store: Storage):
    """A Ray Data source with one read task per file (partitions and phase-1 blocks are
    already the units of work: no listing, no splitting, no merging)."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class ParquetFiles(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(functools.partial(_read_file, store, path),
                             BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(path,)))
                    for path in paths]

    return ParquetFiles()


def _read_file(store: Storage, path: str) -> list[pa.Table]:
    return [store.read_parquet(path)]


def _cpu_node_sizes(ray, tagged: bool) -> list[float]:
    """CPUs of every live node that takes CPU-only work."""
    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes()
            if n["Alive"] and (n["Resources"].get(CPU_NODE_RESOURCE) if tagged else n["Resources"].get("CPU"))]
    return [c for c in cpus if c] or [1.0]


def _driver_node_gpus(ray) -> float:
    here = ray.get_runtime_context().get_node_id()
    return next((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["NodeID"] == here), 0)

