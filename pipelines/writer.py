"""The run's output writer: kept rows to ``shards/``, rejected rows to ``rejects/``.

Both executors call it (``write_table`` for the inline executor's table, ``write_dataset``
for a Ray Dataset), so what a shard holds, what a reject keeps, the file names and the
format live here only. Kept rows lose the runner's cost columns; rejected rows lose
their image bytes too. Files are staged, then named ``part-NNNNN.<suffix>`` in order.

A run writes parquet (``FORMATS``): the manifest, the audit and the trainer read it, and
``curate export`` turns a finished run into the formats other tools read (webdataset
tars, DataComp uid lists).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.pipelines.stage import REJECT
from clipcurate.pipelines.storage import Storage

COST_WALL, COST_CPU = "_cost_wall.", "_cost_cpu."  # per-row seconds the runner adds up, never written
REJECT_FILE_ROWS = 100_000


def cost_columns(batch: pa.Table) -> list[str]:
    return [name for name in batch.column_names if name.startswith((COST_WALL, COST_CPU))]


def kept_rows(batch: pa.Table) -> pa.Table:
    """Kept rows as the shards (and a global stage's fit) get them: without cost columns."""
    kept = batch.filter(pc.is_null(batch.column(REJECT)))
    return kept.drop_columns(cost_columns(kept))


def rejected_rows(batch: pa.Table) -> pa.Table:
    """Rejected rows as the rejects get them: without image bytes and cost columns."""
    rejected = batch.filter(pc.is_valid(batch.column(REJECT)))
    return rejected.drop_columns([c for c in rejected.column_names if c == "image"] + cost_columns(rejected))


@dataclass(frozen=True)
class ParquetFormat:
    suffix: str = ".parquet"

    def write_table(self, store: Storage, table: pa.Table, path: str) -> None:
        store.write_parquet(table, path)

    def write_dataset(self, ds, store: Storage, directory: str, rows: int, remote_args: dict) -> None:
        ds.write_parquet(directory, filesystem=store.fs, min_rows_per_file=min(rows, 1000),
                         max_rows_per_file=rows, ray_remote_args=remote_args)


FORMATS = {"parquet": ParquetFormat()}


@dataclass(frozen=True)
class OutputWriter:
    """Writes one run's rows under ``staging`` (the runner moves them into place)."""

    store: Storage
    staging: str
    shard_rows: int
    format: ParquetFormat = FORMATS["parquet"]

    def parts(self) -> list[tuple[str, Callable[[pa.Table], pa.Table], int]]:
        """(folder, row selection, rows per file) of each output part."""
        return [("shards", kept_rows, self.shard_rows), ("rejects", rejected_rows, REJECT_FILE_ROWS)]

    def write_table(self, table: pa.Table) -> None:
        for name, select, rows in self.parts():
            part = select(table)
            for number, start in enumerate(range(0, part.num_rows, rows)):
                self.format.write_table(self.store, part.slice(start, rows), self._file(name, number))

    def write_dataset(self, ds, map_blocks: Callable, remote_args: dict) -> None:
        """``map_blocks(ds, fn)``: the executor's whole-block step (its CPU placement)."""
        for name, select, rows in self.parts():
            directory = posixpath.join(self.staging, name)
            self.format.write_dataset(map_blocks(ds, select), self.store, directory, rows, remote_args)
            self.store.makedirs(directory)
            for number, path in enumerate(self.store.list_files(directory, self.format.suffix)):
                self.store.move(path, self._file(name, number))  # Ray names files by write task

    def _file(self, name: str, number: int) -> str:
        return posixpath.join(self.staging, name, f"part-{number:05d}{self.format.suffix}")
