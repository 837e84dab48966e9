"""Output (and input) through pyarrow.fs instead of local paths.

What is tested here: ``file://`` URIs for input and output on Ray, and the object-store
code path (no renames, file-by-file moves, reads through the filesystem) on an fsspec
in-memory filesystem, inline. What is not: a real S3/GCS bucket (no network here);
``s3://`` goes through the same ``pyarrow.fs.FileSystem.from_uri`` and code path.
"""

from __future__ import annotations

import copy
import hashlib
import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.pipelines.storage import Storage

RECIPE = {
    "name": "captions",
    "input": {"partition_size": 7},
    "output": {"shard_rows": 5},
    "stages": [{"basic_filter": {}}, {"language_filter": {"keep_languages": ["en"]}}],
}
CAPTIONS = [
    "a red circle on a white background", "ein roter Kreis auf weißem Hintergrund", "ok",
    "a photo of a blue square", "une photo d'un carré bleu sur la table", "close-up of one green star",
    "the yellow ring sits in the middle of a picture", "", "a simple drawing of a black cross",
    "un dibujo sencillo de una cruz negra", "a photo of a pink triangle", "two words",
    "a striped background with an orange circle", "a photo of a purple star on gray paper",
    "ein Foto von einem lila Stern", "a dotted background and a red square",
]


@pytest.fixture
def pool(tmp_path) -> str:
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://img.example/{i}.jpg" for i in range(len(CAPTIONS))],
                             "caption": CAPTIONS}), path)
    return str(path)


def _outcome(store: Storage) -> dict:
    out = {}
    for folder in ("shards", "rejects"):
        for path in store.list_files(store.path(folder), ".parquet"):
            table = store.read_parquet(path)
            reasons = table.column("reject").to_pylist()
            out.update(zip(table.column("uid").to_pylist(), reasons))
    return out


def test_file_uris_give_the_same_run_as_plain_paths(ray_local, pool, tmp_path):
    plain = run_pipeline(*parse_recipe(RECIPE), pool, str(tmp_path / "plain"), RunOptions(progress=False))
    uri = run_pipeline(*parse_recipe(RECIPE), "file://" + pool, f"file://{tmp_path}/uri", RunOptions(progress=False))
    assert uri["totals"] == plain["totals"] == {"input": 16, "kept": 9, "rejected": 7}
    assert [s["rows"] for s in uri["shards"]] == [s["rows"] for s in plain["shards"]]
    assert _outcome(Storage.at(f"file://{tmp_path}/uri")) == _outcome(Storage.at(str(tmp_path / "plain")))
    assert (tmp_path / "uri" / "manifest.json").exists() and not (tmp_path / "uri" / "_work" / "final").exists()


def test_object_store_code_path_inline(pool, tmp_path):
    """An fsspec in-memory filesystem stands in for a bucket: nothing may go through
    os.* or local renames, and the manifest must describe the files as stored."""
    store = Storage(pafs.PyFileSystem(pafs.FSSpecHandler(MemoryFileSystem())), "/bucket/run")
    assert not store.local
    manifest = run_pipeline(*parse_recipe(RECIPE), pool, store, RunOptions(inline=True, progress=False))
    assert manifest["totals"] == {"input": 16, "kept": 9, "rejected": 7}
    assert not (tmp_path / "bucket").exists()

    stored = json.loads(store.read_bytes(store.path("manifest.json")))
    assert stored["totals"] == manifest["totals"]
    for entry in stored["shards"] + stored["rejects"]:
        data = store.read_bytes(store.path(entry["path"]))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    assert [e["path"] for e in stored["shards"]] == ["shards/part-00000.parquet", "shards/part-00001.parquet"]
    kept = _outcome(store)
    assert sum(r is None for r in kept.values()) == 9
    assert {r for r in kept.values() if r} >= {"basic_filter:too_few_words", "language_filter:language=de"}
    everything = store.fs.get_file_info(pafs.FileSelector("/bucket/run", recursive=True))
    assert not [i.path for i in everything if ".tmp" in i.path]

    again = run_pipeline(*parse_recipe(RECIPE), pool, store, RunOptions(inline=True, progress=False))
    assert again["resume"] == {"finished": True}  # the same input and recipe: nothing to do
    assert not store.exists(store.path("_lock.json"))  # the lock works on the store and is released
    changed = copy.deepcopy(RECIPE)
    changed["seed"] = 7
    with pytest.raises(UserError, match="already holds a finished run that differs in seed: 0 -> 7;"):
        run_pipeline(*parse_recipe(changed), pool, store, RunOptions(inline=True, progress=False))
