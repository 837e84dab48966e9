"""Resume never mixes recipes or runs: finished work is keyed by what produced it, and
one run holds an output at a time (issue: a rerun after a changed threshold kept the
old recipe's shards; two runs on one folder hung)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines import fingerprint as fp
from clipcurate.pipelines.errors import InputError, UserError
from clipcurate.pipelines.lock import LOCK_FILE, RunLock
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import InlineExecutor, RunOptions, run_pipeline
from clipcurate.curation.sampleweb import SampleWeb
from clipcurate.pipelines.storage import Storage

DOWNLOAD = {"download": {"image_size": 48, "timeout": 5, "allow_private_networks": True}}


def _recipe(*stages, partition_size: int = 20) -> dict:
    return {"name": "resume", "input": {"partition_size": partition_size}, "output": {"shard_rows": 1000},
            "stages": [DOWNLOAD, *stages]}


def _run(recipe: dict, pool, out, **options) -> dict:
    parsed, stages = parse_recipe(recipe)
    return run_pipeline(parsed, stages, pool, str(out), RunOptions(inline=True, progress=False, **options))


def _interrupted(recipe: dict, pool, out, monkeypatch) -> None:
    """Run ``recipe`` until phase 1 is done, then stop as a Ctrl-C would."""
    def stop(self, files, stages):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(InlineExecutor, "run_phase2", stop)
        with pytest.raises(KeyboardInterrupt):
            _run(recipe, pool, out)
    assert (out / "_work" / "phase1").is_dir() and not (out / "manifest.json").exists()
    assert not (out / LOCK_FILE).exists()  # released on the way out


def _rows(folder) -> dict[str, str | None]:
    """uid -> reject reason (None for kept rows) over shards/ and rejects/."""
    rows = {}
    for name in ("shards", "rejects"):
        for path in sorted((folder / name).glob("*.parquet")):
            table = pq.read_table(path)
            rejects = table.column("reject").to_pylist() if "reject" in table.column_names else [None] * table.num_rows
            rows.update(zip(table.column("uid").to_pylist(), rejects))
    return rows


@pytest.fixture
def web(tmp_path):
    with SampleWeb(n=60, seed=5) as served:
        served.write_pool(str(tmp_path / "pool.parquet"))
        yield served


def test_changed_filter_after_phase1_equals_a_fresh_run_and_fetches_nothing(web, tmp_path, monkeypatch):
    pool, out = tmp_path / "pool.parquet", tmp_path / "out"
    loose = _recipe({"basic_filter": {"min_words": 1, "min_image_side": 8}})
    strict = _recipe({"basic_filter": {"min_words": 6, "min_image_side": 8}})
    _interrupted(loose, pool, out, monkeypatch)
    fetched = sum(web.requests.values())

    with pytest.raises(UserError, match="first change: 'basic_filter'.*--on-change recompute"):
        _run(strict, pool, out, on_change="refuse")
    manifest = _run(strict, pool, out)
    assert sum(web.requests.values()) == fetched  # the download was reused whole
    assert manifest["resume"] == {"recomputed_from": "basic_filter", "phase1_rows_reused": 60}
    assert manifest["recipe"]["stages"][1]["basic_filter"]["min_words"] == 6

    fresh = _run(strict, pool, tmp_path / "fresh")
    assert _rows(out) == _rows(tmp_path / "fresh")
    counts = lambda m: [(s["name"], s["in"], s["kept"], s["reasons"]) for s in m["stages"]]  # noqa: E731
    assert counts(manifest) == counts(fresh) and manifest["fingerprint"] == fresh["fingerprint"]
    assert any(reason and "too_few_words" in reason for reason in _rows(out).values())


def test_unchanged_rerun_runs_nothing_and_a_changed_one_on_a_finished_output_is_refused(web, tmp_path,
                                                                                       monkeypatch):
    pool, out = tmp_path / "pool.parquet", tmp_path / "out"
    recipe = _recipe({"basic_filter": {"min_words": 1, "min_image_side": 8}})
    first = _run(recipe, pool, out)
    fetched = sum(web.requests.values())
    monkeypatch.setattr(InlineExecutor, "run_phase1", lambda *a: pytest.fail("phase 1 ran again"))
    monkeypatch.setattr(InlineExecutor, "run_phase2", lambda *a: pytest.fail("phase 2 ran again"))
    again = _run(recipe, pool, out)
    assert again["resume"] == {"finished": True} and again["totals"] == first["totals"]
    assert sum(web.requests.values()) == fetched

    changed = _recipe({"basic_filter": {"min_words": 2, "min_image_side": 8}})
    with pytest.raises(UserError, match=r"finished run that differs in stages\[1\]\.basic_filter\.min_words: 1 -> 2;"):
        _run(changed, pool, out)


def test_changed_download_parameters_fetch_again(web, tmp_path, monkeypatch):
    """The download's own output changed: its blocks are dropped, not mixed in."""
    pool, out = tmp_path / "pool.parquet", tmp_path / "out"
    _interrupted(_recipe(), pool, out, monkeypatch)
    fetched = sum(web.requests.values())
    smaller = _recipe()
    smaller["stages"] = [{"download": {**DOWNLOAD["download"], "image_size": 32, "resize_mode": "center_crop"}}]
    manifest = _run(smaller, pool, out)
    assert manifest["resume"]["recomputed_from"] == "download" and manifest["resume"]["phase1_dropped_blocks"] > 0
    assert sum(web.requests.values()) > fetched
    widths = {w for p in (out / "shards").glob("*.parquet") for w in pq.read_table(p).column("width").to_pylist()}
    assert widths == {32}
    # speed-only parameters keep the work
    faster = json.loads(json.dumps(smaller))
    faster["stages"][0]["download"]["thread_count"] = 3
    out2 = tmp_path / "out2"
    _interrupted(smaller, pool, out2, monkeypatch)
    assert "recomputed_from" not in _run(faster, pool, out2)["resume"]


def test_changed_input_is_refused_never_mixed(web, tmp_path, monkeypatch):
    pool, out = tmp_path / "pool.parquet", tmp_path / "out"
    _interrupted(_recipe(), pool, out, monkeypatch)
    table = pq.read_table(pool)
    time.sleep(1.1)  # a new mtime second
    pq.write_table(table.slice(0, 40), pool)
    with pytest.raises(InputError, match="different input"):
        _run(_recipe(), pool, out)
    manifest = _run(_recipe(), pool, out, force=True)
    assert manifest["totals"]["input"] == 40


def test_a_filter_model_retrained_in_place_is_another_stage(tmp_path):
    """A checkpoint folder's bytes are part of the stage's fingerprint, for the runner and
    for the ablation's shared segments alike."""
    from clipcurate.curation.ablate import _segment_key
    from clipcurate.filters.clip_score import ClipScore

    model = tmp_path / "filter"
    model.mkdir()
    (model / "open_clip_config.json").write_text("{}")
    (model / "open_clip_pytorch_model.bin").write_bytes(b"weights of round one")
    stage = ClipScore(model=f"local-dir:{model}", min_score=0.2)
    entry = {"clip_score": {"model": f"local-dir:{model}", "min_score": 0.2}}
    before, key_before = fp.stage_fingerprint(stage), _segment_key("pool", entry)
    time.sleep(0.01)
    (model / "open_clip_pytorch_model.bin").write_bytes(b"weights of round two")
    assert fp.stage_fingerprint(stage) != before and _segment_key("pool", entry) != key_before
    assert fp.stage_fingerprint(ClipScore(model=f"local-dir:{model}", min_score=0.2)) == fp.stage_fingerprint(stage)


def test_a_second_run_on_a_busy_output_refuses_at_once(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(_recipe(partition_size=10)))
    with SampleWeb(n=40, seed=2, delay=0.15) as slow:
        pool = slow.write_pool(str(tmp_path / "pool.parquet"))
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "clipcurate.pipelines.cli", "run", str(recipe), "--input", pool, "--output", str(out),
               "--no-progress", "--inline"]
        first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not (out / LOCK_FILE).exists():
            assert time.time() < deadline and first.poll() is None, first.stderr.read() if first.poll() else ""
            time.sleep(0.05)
        holder = json.loads((out / LOCK_FILE).read_text())
        started = time.time()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and time.time() - started < 30
        message = second.stderr.strip().splitlines()[-1]
        assert "in use by another run" in message and f"pid {holder['pid']}" in message
        assert first.wait(timeout=120) == 0, first.stderr.read()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["input"] == 40 and not (out / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over(web, tmp_path):
    pool, out = tmp_path / "pool.parquet", tmp_path / "out"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "command": "run",
                                             "token": "old", "started": "earlier", "heartbeat": 0}))
    manifest = _run(_recipe(), pool, out)
    assert manifest["totals"]["input"] == 60 and not (out / LOCK_FILE).exists()
    # a lock of another host is stale only once its heartbeat is old
    (out / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "x", "started": "now",
                                             "heartbeat": time.time()}))
    with pytest.raises(UserError, match="host elsewhere, pid 1"):
        with RunLock(Storage.at(str(out))):
            pass
    shutil.rmtree(out)


def test_a_retrained_filter_model_rescores_on_resume(web, tmp_path, monkeypatch):
    """Interrupt after the download, retrain the filter model into the same folder,
    rerun: the scores are the new model's (equal to a fresh run), nothing is fetched."""
    import pyarrow as pa

    from clipcurate.curation.sampleweb import trusted_pairs
    from clipcurate.train.api import train

    (tmp_path / "trusted").mkdir()
    pq.write_table(trusted_pairs(64), tmp_path / "trusted" / "part-00000.parquet")
    model = tmp_path / "filter"
    for seed, folder in ((0, model), (1, tmp_path / "round-two")):
        train(tmp_path / "trusted", "clip-tiny", output=folder, steps=2, batch_size=16, seed=seed, quiet=True,
              threads=1)
    pool, out = tmp_path / "pool.parquet", tmp_path / "out"
    recipe = _recipe({"clip_score": {"model": f"local-dir:{model}", "min_score": -1.0, "device": "cpu"}})
    _interrupted(recipe, pool, out, monkeypatch)
    fetched = sum(web.requests.values())
    for path in (tmp_path / "round-two").iterdir():
        if path.is_file():
            shutil.copy(path, model / path.name)  # the same folder, another model

    manifest = _run(recipe, pool, out)
    assert manifest["resume"]["recomputed_from"] == "clip_score" and sum(web.requests.values()) == fetched
    fresh = tmp_path / "fresh"
    _run(recipe, pool, fresh)

    def scores(folder):
        table = pa.concat_tables([pq.read_table(p, columns=["uid", "clip_score"])
                                  for p in sorted((folder / "shards").glob("*.parquet"))])
        return dict(zip(table.column("uid").to_pylist(), table.column("clip_score").to_pylist()))

    assert scores(out) == scores(fresh) and len(scores(out)) > 20
