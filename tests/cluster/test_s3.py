"""Runs, exports and indexes on ``s3://`` against a real S3-compatible server on loopback
(moto in server mode: HTTP, signatures, multipart uploads, listings), reached the way a
user reaches a bucket: ``AWS_*`` environment variables and ``s3://`` URLs through
``pyarrow.fs``. Credentials must never land in anything written or printed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.export import ExportOptions, datacomp_to_uids, export_run
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.curation.sampleweb import SampleWeb
from clipcurate.pipelines.storage import Storage

ACCESS_KEY = "AKIACLIPCURATETEST01"
SECRET_KEY = "cc-secret-Zq81pLx0wVb3nT"  # must appear nowhere we write or print
RECIPE = {
    "name": "s3",
    "input": {"partition_size": 40},
    "output": {"shard_rows": 50},
    "stages": [{"download": {"image_size": 48, "timeout": 5, "allow_private_networks": True}},
               {"basic_filter": {"min_image_side": 8}}],
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with one bucket; AWS_* set for this process and its children."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="runs")
    try:
        yield "s3://runs"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _objects(prefix: str) -> dict[str, bytes]:
    fs, root = pafs.FileSystem.from_uri(prefix)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as handle:
                out[info.path[len(root):].lstrip("/")] = handle.read()
    return out


def _outcome(store: Storage) -> dict:
    out = {}
    for folder in ("shards", "rejects"):
        for path in store.list_files(store.path(folder), ".parquet"):
            table = store.read_parquet(path, columns=["uid", "reject"])
            out.update(zip(table.column("uid").to_pylist(), table.column("reject").to_pylist()))
    return out


def test_run_on_s3_killed_and_resumed_equals_a_local_run(s3, tmp_path):
    """Input and output in the bucket; the driver is killed mid-download; the rerun takes
    over the dead run's lock, fetches only what is missing and ends with the same kept and
    rejected rows as a local run of the same input."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(RECIPE))
    with SampleWeb(n=120, seed=4, delay=0.05) as web:
        local_pool = web.write_pool(str(tmp_path / "pool.parquet"))
        pool = f"{s3}/input/pool.parquet"
        fs, key = pafs.FileSystem.from_uri(pool)
        pq.write_table(pq.read_table(local_pool), key, filesystem=fs)
        out = f"{s3}/out"
        cmd = [sys.executable, "-m", "clipcurate.pipelines.cli", "run", str(recipe), "--input", pool,
               "--output", out, "--no-progress", "--num-cpus", "2"]
        logs = []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        store = Storage.at(out)
        deadline = time.time() + 240
        while time.time() < deadline and not store.list_files(store.path("_work", "phase1"), ".parquet"):
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")[-2000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        logs.append(proc.communicate()[0].decode(errors="replace"))
        assert store.list_files(store.path("_work", "phase1"), ".parquet"), "phase 1 wrote nothing before the kill"
        assert not store.exists(store.path("manifest.json"))
        assert json.loads(store.read_bytes(store.path("_lock.json")))["pid"] == proc.pid
        fetched = sum(web.requests.values())

        resumed = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=400)
        logs.append(resumed.stdout.decode(errors="replace"))
        assert resumed.returncode == 0, logs[-1][-3000:]
        assert sum(web.requests.values()) - fetched < 120  # only the rows phase 1 lacked
        manifest = json.loads(store.read_bytes(store.path("manifest.json")))
        assert manifest["resume"]["phase1_rows_reused"] > 0
        assert not store.exists(store.path("_lock.json"))

        recipe_obj, stages = parse_recipe(RECIPE)
        local = run_pipeline(recipe_obj, stages, local_pool, str(tmp_path / "local"),
                             RunOptions(inline=True, progress=False))
    assert manifest["totals"] == local["totals"]
    assert _outcome(store) == _outcome(Storage.at(str(tmp_path / "local")))
    for entry in manifest["shards"]:  # the manifest describes the objects as stored
        data = store.read_bytes(store.path(entry["path"]))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]

    written = _objects(out)
    for name, data in written.items():
        assert SECRET_KEY.encode() not in data and ACCESS_KEY.encode() not in data, name
    for text in logs:
        assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_export_audit_and_train_on_a_run_in_the_bucket(s3, tmp_path, capsys):
    """A run written to the bucket (inline, from input that already holds images): its
    webdataset tars and uid file written to the bucket equal a local export byte for byte;
    ``curate audit`` uploads its report beside the run; ``curate train`` reads the shards."""
    import io

    from clipcurate.pipelines.cli import main
    from clipcurate.pipelines.stage import make_uid
    from clipcurate.train import datasets

    images, _, captions = datasets.shapes(90, seed=2)
    urls = [f"https://img.example/{i}.png" for i in range(90)]
    pool = pa.table({"url": urls, "caption": captions,
                     "image": pa.array([datasets.encode_png(i) for i in images], pa.binary()),
                     "width": pa.array([32] * 90, pa.int32()), "height": pa.array([32] * 90, pa.int32())})
    pq.write_table(pool, tmp_path / "pool.parquet")
    recipe = {"name": "bucket", "input": {"partition_size": 40}, "output": {"shard_rows": 40},
              "stages": [{"basic_filter": {"min_image_side": 8, "min_words": 2}}]}
    run = f"{s3}/image-run"
    manifest = run_pipeline(*parse_recipe(recipe), str(tmp_path / "pool.parquet"), run,
                            RunOptions(inline=True, progress=False))
    local_run = tmp_path / "local-run"
    run_pipeline(*parse_recipe(recipe), str(tmp_path / "pool.parquet"), str(local_run),
                 RunOptions(inline=True, progress=False))
    assert manifest["totals"]["kept"] == 90

    options = ExportOptions(shard_rows=25, inline=True, progress=False)
    remote = export_run(run, f"{s3}/wds", options)
    local = export_run(str(local_run), str(tmp_path / "wds"), options)
    assert [t["sha256"] for t in remote["tars"]] == [t["sha256"] for t in local["tars"]]
    objects = _objects(f"{s3}/wds")
    assert sorted(objects) == ["000000.tar", "000001.tar", "000002.tar", "000003.tar", "manifest.json"]
    assert hashlib.sha256(objects["000001.tar"]).hexdigest() == remote["tars"][1]["sha256"]
    assert remote["train_data"] == "s3://runs/wds/{000000..000003}.tar"
    export_run(run, f"{s3}/subsets/kept.npy", ExportOptions(format="uids"))
    array = np.load(io.BytesIO(_objects(f"{s3}/subsets")["kept.npy"]))
    assert datacomp_to_uids(array) == sorted(make_uid(u, c) for u, c in zip(urls, captions))

    cache = tmp_path / "cache"
    assert main(["audit", run, "--cache", str(cache)]) == 0
    assert "report uploaded: s3://runs/image-run/report/index.html" in capsys.readouterr().out
    report = _objects(f"{run}/report")
    assert b"Funnel" in report["index.html"]
    # the statistics read a local mirror without image bytes; the thumbnails come from the bucket
    mirrored = list(cache.rglob("shards/*.parquet"))
    assert mirrored and all("image" not in pq.read_schema(p).names for p in mirrored)
    thumbs = [name for name in report if name.endswith(".jpg")]
    assert len(thumbs) >= 24
    assert all(data[:3] == b"\xff\xd8\xff" for name, data in report.items() if name in thumbs)

    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO))
    assert main(["train", "--data", run, "--model", str(config), "--steps", "2", "--batch-size", "16",
                 "--output", str(tmp_path / "ckpt"), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2


MICRO = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 16, "layers": 1, "head_width": 8,
                                         "mlp_ratio": 2.0},
         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1,
                      "mlp_ratio": 2.0}}


def test_train_publishes_checkpoints_to_the_bucket_and_resumes_from_it(s3, tmp_path, monkeypatch):
    """``--output s3://...``: each save lands in the bucket (state file last); a second run
    without ``--resume`` is refused, with it continues from the bucket's step; the
    checkpoint then loads straight from its URL (``curate eval --model s3://...``)."""
    from clipcurate.pipelines.errors import UserError
    from clipcurate.train import datasets
    from clipcurate.train.api import train
    from clipcurate.train.clip_model import load_clip, model_fingerprint

    monkeypatch.setenv("CLIPCURATE_CACHE", str(tmp_path / "cache"))
    images, _, captions = datasets.shapes(64, seed=3)
    pq.write_table(pa.table({"image": pa.array([datasets.encode_png(i) for i in images], pa.binary()),
                             "caption": captions}), tmp_path / "shard.parquet")
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO))
    output = f"{s3}/ckpt"
    options = {"batch_size": 16, "save_every": 2, "quiet": True, "seed": 1, "threads": 1}
    first = train(str(tmp_path / "shard.parquet"), str(config), output=output, steps=6, stop_after=4, **options)
    assert first.output == output and first.step == 4
    stored = _objects(output)
    assert {"open_clip_config.json", "open_clip_pytorch_model.bin", "train_state.json", "trainer_state.pt",
            "train_log.jsonl"} <= set(stored)
    assert json.loads(stored["train_state.json"])["step"] == 4
    with pytest.raises(UserError, match="already holds a training checkpoint"):
        train(str(tmp_path / "shard.parquet"), str(config), output=output, steps=6, **options)

    resumed = train(str(tmp_path / "shard.parquet"), str(config), output=output, steps=6, resume=True, **options)
    assert resumed.step == 6 and json.loads(_objects(output)["train_state.json"])["step"] == 6
    straight = train(str(tmp_path / "shard.parquet"), str(config), output=str(tmp_path / "local"), steps=6, **options)
    assert straight.loss == pytest.approx(resumed.loss, rel=1e-5)  # resuming from the bucket lost nothing

    clip = load_clip(output)
    assert sum(p.numel() for p in clip.model.parameters()) > 0
    assert model_fingerprint(output).split("|")[2] == model_fingerprint(str(tmp_path / "local")).split("|")[2]


def test_credentials_in_a_url_are_refused(s3):
    with pytest.raises(UserError, match="environment"):
        Storage.at(f"s3://{ACCESS_KEY}:{SECRET_KEY}@runs/out")
