"""The shard stream: every row once per epoch across ranks x workers, exact resume."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from clipcurate.pipelines.errors import UserError
from clipcurate.train.data import ShardStream, loader, plan_units, shard_files


@pytest.fixture(scope="module")
def numbered_run(tmp_path_factory):
    """500 rows captioned "row N" (unique), 2 shards with row groups of 60."""
    from PIL import Image

    from clipcurate.train import datasets

    root = tmp_path_factory.mktemp("numbered")
    images = [Image.new("RGB", (8, 8), (i % 256, 0, 0)) for i in range(500)]
    datasets.write_shards(root, images, [f"row {i}" for i in range(500)], rows_per_shard=300, row_group_size=60)
    return root


class CaptionTokenizer:
    """Stands in for a tokenizer so batches carry their captions' row ids."""

    def __call__(self, captions):
        return list(captions)


def _ids(captions, table):
    index = {c: i for i, c in enumerate(table)}
    return [index[c] for c in captions]


def _all_captions(run):
    return [c for f in shard_files(run) for c in pq.read_table(f, columns=["caption"]).column("caption").to_pylist()]


def _stream(run, **kwargs):
    defaults = dict(preprocess=lambda image: torch.zeros(1), tokenizer=CaptionTokenizer(), batch_size=16,
                    seed=3, shuffle_buffer=50)
    defaults.update(kwargs)
    return ShardStream(shard_files(run), **defaults)


def test_shard_files_accepts_run_dir_shards_dir_and_glob(shapes_run):
    run = shapes_run / "run"
    expected = sorted(str(p) for p in (run / "shards").glob("*.parquet"))
    assert len(expected) == 3
    assert shard_files(run) == expected
    assert shard_files(run / "shards") == expected
    assert shard_files(str(run / "shards" / "part-*.parquet")) == expected
    with pytest.raises(UserError, match="not found"):
        shard_files(shapes_run / "missing")


def test_ranks_and_workers_cover_every_row_once_per_epoch(shapes_run):
    run = shapes_run / "run"
    captions = _all_captions(run)
    # captions repeat (templated), so identify rows by (file, row) through the units
    seen = []
    world_size, workers = 2, 3
    for rank in range(world_size):
        stream = _stream(run, rank=rank, world_size=world_size, num_workers=workers)
        for local in range(workers):
            worker = rank * workers + local
            units = stream.worker_units(worker)
            assert units, "every data worker gets rows"
            seen += [(u.path, u.row_group, r) for u in units for r in range(u.start, u.stop)]
            rows = list(stream._epoch_rows(units, worker, epoch=0))
            assert len(rows) == stream.rows_per_epoch(worker)
    assert len(seen) == len(set(seen)) == len(captions) == 640


def test_units_split_when_fewer_row_groups_than_workers(shapes_run):
    files = shard_files(shapes_run / "run")[:1]  # 256 rows in 4 row groups
    units = plan_units(files, 10)
    assert len(units) >= 10
    assert sum(u.rows for u in units) == 256
    with pytest.raises(UserError, match="cannot feed"):
        plan_units(files, 1000)


def test_every_worker_gets_rows_from_uneven_tiny_shards(tmp_path):
    import pyarrow as pa

    files = []
    for i, rows in enumerate([1, 1, 1, 30]):
        files.append(str(tmp_path / f"part-{i}.parquet"))
        pq.write_table(pa.table({"image": [b"x"] * rows, "caption": [f"{i}"] * rows}), files[-1])
    for slots in (8, 33):
        units = plan_units(files, slots)
        assert len(units) >= slots and sum(u.rows for u in units) == 33


def test_dataloader_workers_and_ranks_yield_disjoint_rows_covering_the_epoch(numbered_run):
    seen = []
    for rank in range(2):
        stream = _stream(numbered_run, rank=rank, world_size=2, num_workers=2, batch_size=5, shuffle_buffer=10)
        per_worker = {w: stream.rows_per_epoch(w) for w in (2 * rank, 2 * rank + 1)}
        assert all(n % 5 == 0 for n in per_worker.values())  # 60-row units: whole batches
        got = dict.fromkeys(per_worker, 0)
        it = iter(loader(stream, 2))  # real worker processes
        while any(got[w] < per_worker[w] for w in got):
            batch = next(it)
            assert batch.position == got[batch.worker] + 5  # each worker in its own order
            got[batch.worker] = batch.position
            if batch.position <= per_worker[batch.worker]:  # a fast worker may be in epoch 2
                seen += batch.texts
        del it
    assert sorted(seen) == sorted(f"row {i}" for i in range(500))


def test_resume_from_a_position_continues_the_same_sequence(shapes_run):
    run = shapes_run / "run"
    full = iter(_stream(run))
    straight = [next(full) for _ in range(60)]  # 960 rows: crosses into epoch 2
    assert straight[-1].position == 960
    for stop in (5, 39, 40):
        resumed = iter(_stream(run, start_positions={0: straight[stop - 1].position}))
        for expected in straight[stop:stop + 3]:
            batch = next(resumed)
            assert batch.position == expected.position
            assert batch.texts == expected.texts


def test_epochs_are_reshuffled_and_augmentation_is_seeded_by_position(shapes_run, micro_config):
    from clipcurate.train.model import create

    run = shapes_run / "run"
    stream = _stream(run)
    epoch0 = [c for _, c in stream._epoch_rows(stream.worker_units(0), 0, 0)]
    epoch1 = [c for _, c in stream._epoch_rows(stream.worker_units(0), 0, 1)]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    bundle = create(micro_config)
    first = next(iter(_stream(run, preprocess=bundle.preprocess_train)))
    torch.manual_seed(123)  # global RNG state must not matter
    again = next(iter(_stream(run, preprocess=bundle.preprocess_train)))
    assert torch.equal(first.images, again.images)
