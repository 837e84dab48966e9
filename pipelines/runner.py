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
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.errors import UserError
from pipelines.manifest import build_manifest, write_json_atomic
from pipelines.readers import split_input
from pipelines.recipe import Recipe
from pipelines.stage import REJECT, GlobalStage, Stage

WORK = "_work"


@dataclass
class RunOptions:
    """How to execute: on Ray (embedded or ``address``) or inline in this process."""

    address: str | None = None
    inline: bool = False
    force: bool = False
    progress: bool = True
    num_cpus: int | None = None
    extra: dict = field(default_factory=dict)


def run_pipeline(recipe: Recipe, stages: list[Stage], input_spec, output: str,
                 options: RunOptions | None = None, recipe_source: str | None = None) -> dict:
    """Run ``stages`` over ``input_spec`` into ``output``; returns the manifest dict."""
    options = options or RunOptions()
    started = time.time()
    output = os.path.abspath(output)
    if options.force and os.path.exists(output):
        shutil.rmtree(output)
    if os.path.exists(os.path.join(output, "manifest.json")):
        raise UserError(f"{output}: already holds a finished run (manifest.json); use --force or a new --output")
    work = os.path.join(output, WORK)
    os.makedirs(work, exist_ok=True)
    index = split_input(input_spec, recipe.input, work)

    first_global = next((i for i, s in enumerate(stages) if s.is_global), len(stages))
    phase1_stages, phase2_stages = stages[:first_global], stages[first_global:]
    executor = InlineExecutor() if options.inline else RayExecutor(options)

    phase1_dir = os.path.join(work, "phase1")
    os.makedirs(phase1_dir, exist_ok=True)
    pending, exclude = _pending_partitions(index, phase1_dir)
    if pending:
        executor.run_phase1(pending, exclude, phase1_stages, phase1_dir)
    phase1_files = _check_phase1(index, phase1_dir)

    staging = os.path.join(work, "final")
    if os.path.exists(staging):
        shutil.rmtree(staging)
    fitted = executor.run_phase2(phase1_files, phase2_stages, staging, recipe.output.shard_rows)

    stats_files = _write_stats(fitted, staging)
    for name in ("shards", "rejects", "stats"):
        final = os.path.join(output, name)
        if os.path.exists(final):
            shutil.rmtree(final)
        if os.path.exists(os.path.join(staging, name)):
            os.replace(os.path.join(staging, name), final)
        else:
            os.makedirs(final)
    manifest = build_manifest(
        output=output, recipe=recipe, stages=stages, index=index, stats_files=stats_files,
        recipe_source=recipe_source, wall_s=time.time() - started,
    )
    write_json_atomic(os.path.join(output, "manifest.json"), manifest)
    shutil.rmtree(staging, ignore_errors=True)
    return manifest


# ------------------------------------------------------------------ resume bookkeeping


def _pending_partitions(index: dict, phase1_dir: str) -> tuple[list[str], list[str]]:
    """Input partitions with rows not yet in phase 1, and the uids already done."""
    done = set()
    for path in _parquet_files(phase1_dir):
        done.update(pq.read_table(path, columns=["uid"]).column("uid").to_pylist())
    pending, exclude = [], []
    for part in index["partitions"]:
        uids = pq.read_table(part["path"], columns=["uid"]).column("uid").to_pylist()
        finished = [u for u in uids if u in done]
        if len(finished) < len(uids):
            pending.append(part["path"])
            exclude.extend(finished)
    return pending, exclude


def _check_phase1(index: dict, phase1_dir: str) -> list[str]:
    """Every input row is in phase 1 exactly once; otherwise fail loudly."""
    files = _parquet_files(phase1_dir)
    seen: set[str] = set()
    for path in files:
        uids = pq.read_table(path, columns=["uid"]).column("uid").to_pylist()
        twice = seen.intersection(uids)
        if twice or len(set(uids)) != len(uids):
            raise RuntimeError(f"phase 1 wrote uid {sorted(twice)[:1]} twice ({path}); rerun with --force")
        seen.update(uids)
    if len(seen) != index["rows"]:
        raise RuntimeError(f"phase 1 holds {len(seen)} rows for {index['rows']} input rows")
    return files


def _parquet_files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".parquet"))


def _write_stats(stages: list[Stage], staging: str) -> dict[str, str]:
    files = {}
    for stage in stages:
        if not isinstance(stage, GlobalStage):
            continue
        for key, table in stage.stats().items():
            name = f"{stage.label}.{key}"
            os.makedirs(os.path.join(staging, "stats"), exist_ok=True)
            pq.write_table(table, os.path.join(staging, "stats", name + ".parquet"))
            files[name] = f"stats/{name}.parquet"
    return files


# ------------------------------------------------------------------ shared block helpers


def apply_stage(stage: Stage, batch: pa.Table) -> pa.Table:
    stage.ensure_setup()
    out = stage(batch)
    if out.num_rows != batch.num_rows:
        raise RuntimeError(f"stage {stage.label} returned {out.num_rows} rows for {batch.num_rows}")
    return out


def prepare_stage(stage: GlobalStage, batch: pa.Table) -> pa.Table:
    stage.ensure_setup()
    out = stage.prepare(batch)
    if out.num_rows != batch.num_rows:
        raise RuntimeError(f"stage {stage.label} prepare returned {out.num_rows} rows for {batch.num_rows}")
    return out


def write_block(batch: pa.Table, out_dir: str) -> pa.Table:
    """Write one phase-1 block atomically, named by a hash of its uids."""
    uids = batch.column("uid").to_pylist()
    if not uids:
        return pa.table({"file": pa.array([], pa.string()), "rows": pa.array([], pa.int64())})
    digest = hashlib.blake2b("\n".join(uids).encode(), digest_size=10).hexdigest()
    path = os.path.join(out_dir, f"block-{digest}.parquet")
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(batch, tmp)
    os.replace(tmp, path)
    return pa.table({"file": [path], "rows": [len(uids)]})


def drop_uids(batch: pa.Table, exclude: pa.Array) -> pa.Table:
    return batch.filter(pc.invert(pc.is_in(batch.column("uid"), value_set=exclude)))


def kept_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch.column(REJECT)))


def rejected_rows(batch: pa.Table) -> pa.Table:
    rejected = batch.filter(pc.is_valid(batch.column(REJECT)))
    return rejected.drop_columns(["image"]) if "image" in rejected.column_names else rejected


def _needs_actor(stage: Stage) -> bool:
    """Actors only where a stage loads something in setup() or needs a GPU."""
    resources = stage.resources()
    return resources.num_gpus > 0 or resources.concurrency is not None or type(stage).setup is not Stage.setup


# ------------------------------------------------------------------ inline executor


class InlineExecutor:
    """Runs every stage in this process over pyarrow tables: for debugging and tests.

    Global stages still fit through a small local Ray Dataset (their ``fit`` contract).
    """

    def run_phase1(self, pending: list[str], exclude: list[str], stages: list[Stage], out_dir: str) -> None:
        exclude_array = pa.array(exclude, pa.string())
        for path in pending:
            table = drop_uids(pq.read_table(path), exclude_array)
            for stage in stages:
                table = _in_batches(table, stage, functools.partial(apply_stage, stage))
            write_block(table, out_dir)

    def run_phase2(self, files: list[str], stages: list[Stage], staging: str, shard_rows: int) -> list[Stage]:
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
        for stage in stages:
            if stage.is_global:
                table = _in_batches(table, stage, functools.partial(prepare_stage, stage))
                import ray.data

                stage.fit(ray.data.from_arrow(kept_rows(table)))
            table = _in_batches(table, stage, functools.partial(apply_stage, stage))
        kept, rejected = kept_rows(table), rejected_rows(table)
        for name, part, rows in (("shards", kept, shard_rows), ("rejects", rejected, 100_000)):
            os.makedirs(os.path.join(staging, name), exist_ok=True)
            for number, start in enumerate(range(0, part.num_rows, rows)):
                pq.write_table(part.slice(start, rows), os.path.join(staging, name, f"part-{number:05d}.parquet"))
        return stages


def _in_batches(table: pa.Table, stage: Stage, fn) -> pa.Table:
    size = stage.resources().batch_size or max(table.num_rows, 1)
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


class RayExecutor:
    """Runs stages as Ray Data ``map_batches`` operators: tasks, or actor pools for
    stages with a model/automaton or a GPU."""

    def __init__(self, options: RunOptions):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            address = options.address or os.environ.get("RAY_ADDRESS")
            kwargs = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": True}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=options.num_cpus, **kwargs)
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = options.progress
        context.print_on_execution_start = options.progress
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def _map(self, ds, stage: Stage, method: str = "__call__"):
        resources = stage.resources()
        common = dict(
            batch_format="pyarrow",
            batch_size=resources.batch_size,
            num_cpus=resources.num_cpus,
            zero_copy_batch=True,
        )
        if resources.num_gpus:
            common["num_gpus"] = resources.num_gpus
        if _needs_actor(stage):
            size = resources.concurrency
            pool = self.ray.data.ActorPoolStrategy(size=size) if size else \
                self.ray.data.ActorPoolStrategy(min_size=1, max_size=self.cpus)
            return ds.map_batches(
                _StageActor,
                fn_constructor_kwargs={"stage": stage, "method": method},
                compute=pool,
                **common,
            )
        fn = prepare_stage if method == "prepare" else apply_stage
        return ds.map_batches(functools.partial(fn, stage), **common)

    def run_phase1(self, pending: list[str], exclude: list[str], stages: list[Stage], out_dir: str) -> None:
        ds = self.ray.data.read_parquet(pending, override_num_blocks=len(pending))
        if exclude:
            ds = ds.map_batches(functools.partial(drop_uids, exclude=pa.array(exclude, pa.string())),
                                batch_format="pyarrow", batch_size=None)
        for stage in stages:
            ds = self._map(ds, stage)
        written = ds.map_batches(functools.partial(write_block, out_dir=out_dir), batch_format="pyarrow", batch_size=None)
        written.take_all()

    def run_phase2(self, files: list[str], stages: list[Stage], staging: str, shard_rows: int) -> list[Stage]:
        ds = self.ray.data.read_parquet(files)
        for stage in stages:
            if stage.is_global:
                ds = self._map(ds, stage, method="prepare").materialize()
                stage.fit(ds.map_batches(kept_rows, batch_format="pyarrow", batch_size=None))
            ds = self._map(ds, stage)
        ds = ds.materialize()
        kept = ds.map_batches(kept_rows, batch_format="pyarrow", batch_size=None)
        rejected = ds.map_batches(rejected_rows, batch_format="pyarrow", batch_size=None)
        for name, part, rows in (("shards", kept, shard_rows), ("rejects", rejected, 100_000)):
            target = os.path.join(staging, name)
            part.write_parquet(target, min_rows_per_file=min(rows, 1000), max_rows_per_file=rows)
            _rename_sequential(target)
        return stages


def _rename_sequential(directory: str) -> None:
    """Ray names files by write task; the output uses part-00000.parquet, ..."""
    os.makedirs(directory, exist_ok=True)
    names = sorted(f for f in os.listdir(directory) if f.endswith(".parquet"))
    for number, name in enumerate(names):
        os.replace(os.path.join(directory, name), os.path.join(directory, f"part-{number:05d}.parquet"))
