"""Stream a run's output shards (``OUT/shards/*.parquet``) as training batches.

The unit of work is a slice of a parquet row group (webdataset-style shard splitting,
but at row-group grain so one big shard still feeds many workers). Units are dealt
round-robin to the ``world_size * num_workers`` data-loader workers, so no sample is
read twice per epoch. Each worker, per epoch, visits its units in a seeded order and
passes rows through a seeded shuffle buffer that is flushed at the end of the epoch,
so epoch ``e`` of worker ``w`` is one fixed sequence of ``n_w`` rows. A worker's
position is the count of rows it has consumed (rows without image or caption are
consumed but not trained on); resuming at position ``p`` replays
epoch ``p // n_w`` up to row ``p % n_w`` on raw rows (no image decoding), then goes on.

Images are decoded and augmented only when a batch is built; augmentation randomness
(torch's and Python's ``random``, which open_clip's colour jitter draws from) is seeded
from (seed, worker, position), so it does not depend on process layout.
"""

from __future__ import annotations

import contextlib
import glob
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.storage import Storage, is_uri

COLUMNS = ("image", "caption")


@dataclass(frozen=True)
class Unit:
    """Rows ``[start, stop)`` of one row group of one parquet file."""

    path: str
    row_group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class Batch:
    images: torch.Tensor
    texts: torch.Tensor
    worker: int  # global data worker index (rank * num_workers + worker id)
    position: int  # rows this worker has consumed, this batch included


def shard_files(data: str | Path | list) -> list[str]:
    """Parquet files of ``data``: a run directory (its ``shards/``), a directory of
    parquet files, a glob, a file, or a list of those. Sorted, so every rank agrees."""
    items = data if isinstance(data, (list, tuple)) else [data]
    files: list[str] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if is_uri(text):  # s3://bucket/run, gs://..., file://: listed through pyarrow.fs
            files += _uri_shard_files(text)
        elif path.is_dir():
            base = path / "shards" if (path / "shards").is_dir() else path
            files += [str(p) for p in base.glob("*.parquet")]
        elif any(ch in text for ch in "*?["):
            files += glob.glob(text)
        elif path.is_file():
            files.append(text)
        else:
            raise UserError(f"training data {text!r} not found (a run dir, shards dir, glob or parquet file)")
    files = sorted(set(files))
    if not files:
        raise UserError(f"no parquet shards found in {data!r}")
    return files


def _uri_shard_files(uri: str) -> list[str]:
    store = Storage.at(uri)
    if store.is_dir(store.root):
        base = store.child("shards") if store.is_dir(store.path("shards")) else store
        return [base.uri(p) for p in base.list_files(base.root, ".parquet")]
    if store.exists(store.root):
        return [uri]
    raise UserError(f"training data {uri!r} not found (a run dir, shards dir or parquet file; no globs in URLs)")


def plan_units(files: list[str], num_slots: int) -> list[Unit]:
    """Row-group slices, split finer when there are fewer row groups than workers."""
    groups = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        names = set(meta.schema.names)
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise UserError(f"shard {path} lacks column(s) {missing}: is it a run's shards/ output?")
        groups += [(path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    total = sum(n for *_, n in groups)
    if total < num_slots:
        raise UserError(f"{total} training rows cannot feed {num_slots} data workers")
    groups = [(path, g, n) for path, g, n in groups if n]
    pieces = math.ceil(num_slots / len(groups))
    while True:  # every worker needs a unit; small row groups may split into fewer pieces
        units = []
        for path, g, n in groups:
            step = math.ceil(n / pieces)
            units += [Unit(path, g, s, min(s + step, n)) for s in range(0, n, step)]
        if len(units) >= num_slots:
            return units
        pieces *= 2


class ShardStream(torch.utils.data.IterableDataset):
    """An endless stream of collated batches for one rank; see the module docstring.

    ``start_positions`` maps global worker index -> rows already yielded (resume).
    """

    def __init__(self, files: list[str], *, preprocess: Callable, tokenizer: Callable,
                 batch_size: int, seed: int = 0, shuffle_buffer: int = 1000, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0,
                 start_positions: dict[int, int] | None = None):
        self.files = files
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank = rank
        self.world_size = world_size
        self.workers_per_rank = max(num_workers, 1)
        self.start_positions = dict(start_positions or {})
        self.units = plan_units(files, world_size * self.workers_per_rank)

    def worker_units(self, worker: int) -> list[Unit]:
        slots = self.world_size * self.workers_per_rank
        return self.units[worker::slots]

    def rows_per_epoch(self, worker: int) -> int:
        return sum(u.rows for u in self.worker_units(worker))

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker = self.rank * self.workers_per_rank + (info.id if info else 0)
        units = self.worker_units(worker)
        per_epoch = self.rows_per_epoch(worker)
        position = self.start_positions.get(worker, 0)
        epoch, skip = divmod(position, per_epoch)
        pending: list[tuple[bytes, str]] = []
        while True:
            for image, caption in self._epoch_rows(units, worker, epoch):
                if skip:
                    skip -= 1
                    continue
                position += 1
                if image is None or caption is None:
                    continue
                pending.append((image, caption))
                if len(pending) == self.batch_size:
                    yield self._collate(pending, worker, position)
                    pending = []
            epoch += 1

    def _epoch_rows(self, units: list[Unit], worker: int, epoch: int) -> Iterator[tuple[bytes, str]]:
        rng = np.random.default_rng([self.seed, worker, epoch])
        buffer: list[tuple[bytes, str]] = []
        for index in rng.permutation(len(units)):
            for row in _read_unit(units[index]):
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(row)
                    continue
                pick = int(rng.integers(len(buffer)))
                buffer[pick], row = row, buffer[pick]
                yield row
        rng.shuffle(buffer)
        yield from buffer

    def _collate(self, rows: list[tuple[bytes, str]], worker: int, position: int) -> Batch:
        with torch.random.fork_rng(devices=[]), _python_random():
            seed = hash((self.seed, worker, position)) & 0x7FFF_FFFF
            torch.manual_seed(seed)
            random.seed(seed)
            images = torch.stack([self.preprocess(decode_image(image)) for image, _ in rows])
        texts = self.tokenizer([caption for _, caption in rows])
        return Batch(images, texts, worker, position)


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    return image.convert("RGB")


def loader(stream: ShardStream, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over the stream's ready batches (``batch_size=None``)."""
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=num_workers, collate_fn=_identity,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None)


@contextlib.contextmanager
def _python_random():
    """Restore Python's global ``random`` state afterwards (as ``fork_rng`` does torch's)."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def _identity(batch):
    return batch


def _read_unit(unit: Unit) -> Iterator[tuple[bytes, str]]:
    table = pq.ParquetFile(unit.path).read_row_group(unit.row_group, columns=list(COLUMNS))
    table = table.slice(unit.start, unit.rows)
    images = table.column("image").to_pylist()
    captions = table.column("caption").to_pylist()
    yield from zip(images, captions)
