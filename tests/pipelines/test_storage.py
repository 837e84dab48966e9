"""``Storage``'s copying and row reads, on an object-store filesystem (fsspec's in-memory
one through ``pyarrow.fs``: no renames, objects appear whole)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from clipcurate.pipelines.storage import Storage


@pytest.fixture
def store():
    memory = MemoryFileSystem()
    memory.store.clear()
    return Storage(pafs.PyFileSystem(pafs.FSSpecHandler(memory)), "/bucket/run")


def test_read_rows_reads_only_the_row_groups_that_hold_them(store, monkeypatch):
    table = pa.table({"uid": [f"u{i:02d}" for i in range(50)], "image": [bytes([i]) * 10 for i in range(50)]})
    path = store.path("shards", "part.parquet")
    store.makedirs(store.path("shards"))
    pq.write_table(table, path, filesystem=store.fs, row_group_size=8)  # 7 row groups
    read = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, group, **kw: read.append(group) or original(self, group, **kw))
    rows = [49, 3, 17, 16, 3]  # any order, repeats, across groups
    got = store.read_rows(path, rows, ["uid", "image", "absent"])
    assert read == [0, 2, 6]  # rows 3 | 16, 17 | 49: each group once, no other
    assert got.column_names == ["uid", "image"]
    assert got.column("uid").to_pylist() == [f"u{i:02d}" for i in rows]
    assert got.column("image").to_pylist() == [bytes([i]) * 10 for i in rows]
    assert store.read_rows(path, [], ["uid"]).num_rows == 0
    with pytest.raises(IndexError):
        store.read_rows(path, [50], ["uid"])


def test_push_then_pull_copies_a_folder_and_skips_what_is_current(store, tmp_path, monkeypatch):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "a.bin").write_bytes(b"a" * 100)
    (source / "sub" / "b.txt").write_text("b")
    (source / "state.json").write_text("{}")
    (source / "z.bin").write_bytes(b"z")
    written = []
    original = Storage.open_output
    monkeypatch.setattr(Storage, "open_output", lambda self, path: written.append(path) or original(self, path))
    assert store.push(source, store.root, first=("z.bin",), last=("a.bin",)) == 4
    assert written == [store.path(p) for p in ("z.bin", "state.json", "sub/b.txt", "a.bin")]
    assert store.read_bytes(store.path("sub", "b.txt")) == b"b"

    target = tmp_path / "target"
    assert store.pull(store.root, target) == 4
    assert (target / "a.bin").read_bytes() == b"a" * 100 and (target / "sub" / "b.txt").read_text() == "b"
    assert store.pull(store.root, target) == 0  # same sizes: current


def test_pull_copies_a_changed_file_of_the_same_size(tmp_path):
    """A retrained checkpoint has the size of the last one: the source's time decides."""
    remote = Storage.at(str(tmp_path / "remote"))
    remote.write_bytes(b"a" * 100, remote.path("weights.bin"))
    target = tmp_path / "target"
    assert remote.pull(remote.root, target) == 1
    assert remote.pull(remote.root, target) == 0
    remote.write_bytes(b"b" * 100, remote.path("weights.bin"))
    os.utime(remote.path("weights.bin"), ns=(10**18, 10**18))  # a later save
    assert remote.pull(remote.root, target) == 1
    assert (target / "weights.bin").read_bytes() == b"b" * 100
    assert not list(target.rglob("*.part-*"))
