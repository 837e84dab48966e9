"""``curate export``: webdataset tars that open_clip's own training pipeline reads and
trains on, DataComp uid subset files, and Hugging Face ``datasets`` reading our shards."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clipcurate.pipelines.cli import main
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.export import ExportOptions, datacomp_to_uids, export_run
from clipcurate.train import datasets

ROWS = 230


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run's shards: 230 shapes in 3 parquet files with row groups of 40, a third of
    the images JPEG (the rest PNG), and a float16 ``clip_image_emb`` column."""
    root = tmp_path_factory.mktemp("export") / "run"
    images, _, captions = datasets.shapes(ROWS, seed=3)
    paths = datasets.write_shards(root, images, captions, rows_per_shard=100, row_group_size=40)
    for path in paths:
        table = pq.read_table(path)
        encoded = table.column("image").to_pylist()
        for i in range(0, len(encoded), 3):
            buffer = io.BytesIO()
            Image.open(io.BytesIO(encoded[i])).convert("RGB").save(buffer, "JPEG", quality=90)
            encoded[i] = buffer.getvalue()
        emb = np.random.default_rng(len(encoded)).normal(size=(len(encoded), 8)).astype(np.float16)
        table = table.set_column(table.column_names.index("image"), "image", pa.array(encoded, pa.binary()))
        table = table.append_column("clip_image_emb", pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 8))
        table = table.append_column("clip_score", pa.array(np.linspace(0.1, 0.4, len(encoded)), pa.float32()))
        pq.write_table(table, path, row_group_size=40)
    return root


def _shard_rows(run_dir) -> dict:
    table = pq.read_table(run_dir / "shards")
    return {r["uid"]: r for r in table.to_pylist()}


def _read_tars(folder) -> dict:
    samples = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_webdataset_export_holds_every_kept_row_once(run_dir, tmp_path):
    out = tmp_path / "wds"
    manifest = export_run(str(run_dir), str(out), ExportOptions(shard_rows=64, inline=True, embeddings=True,
                                                                progress=False))
    assert [t["rows"] for t in manifest["tars"]] == [64, 64, 64, 38]
    assert manifest["train_data"] == f"{out}/{{000000..000003}}.tar" and manifest["train_num_samples"] == ROWS
    for entry in manifest["tars"]:
        data = (out / entry["name"]).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    rows, samples = _shard_rows(run_dir), _read_tars(out)
    assert set(samples) == set(rows)
    for uid, sample in samples.items():
        row = rows[uid]
        ext = "jpg" if row["image"][:3] == b"\xff\xd8\xff" else "png"
        assert set(sample) == {ext, "txt", "json", "clip_image_emb.npy"}
        assert sample[ext] == row["image"] and sample["txt"].decode() == row["caption"]
        meta = json.loads(sample["json"])
        assert meta["uid"] == uid and meta["url"] == row["url"] and meta["width"] == row["width"]
        assert "image" not in meta and "clip_image_emb" not in meta
        assert abs(meta["clip_score"] - row["clip_score"]) < 1e-6
        assert np.load(io.BytesIO(sample["clip_image_emb.npy"])).tolist() == \
            np.asarray(row["clip_image_emb"], np.float16).tolist()
    # tarfile's format, as webdataset's own writer lays it out: the same samples rewritten
    # with TarWriter give the same bytes
    for entry in manifest["tars"]:
        assert _rewritten_with_tar_writer(out / entry["name"]) == (out / entry["name"]).read_bytes()
    # the same shards give byte-identical tars
    again = export_run(str(run_dir), str(tmp_path / "again"), ExportOptions(shard_rows=64, inline=True,
                                                                             embeddings=True, progress=False))
    assert [t["sha256"] for t in again["tars"]] == [t["sha256"] for t in manifest["tars"]]


def _rewritten_with_tar_writer(path) -> bytes:
    """The samples of a tar (in order) written again by webdataset's ``TarWriter`` with
    the export's settings (ustar, mtime 0, owner clipcurate)."""
    from webdataset import TarWriter

    samples: list[dict] = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            assert member.mode == 0o444 and member.mtime == 0 and member.uname == member.gname == "clipcurate"
            key, _, ext = member.name.partition(".")
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(member).read()
    buffer = io.BytesIO()
    with TarWriter(buffer, encoder=False, mtime=0, user="clipcurate", group="clipcurate") as writer:
        writer.tarstream.format = tarfile.USTAR_FORMAT
        for sample in samples:
            writer.write(sample)
        writer.tarstream.close()
        return buffer.getvalue()


def test_export_resumes_only_the_missing_tars_and_refuses_other_options(run_dir, tmp_path):
    out = tmp_path / "wds"
    options = ExportOptions(shard_rows=50, inline=True, progress=False)
    first = export_run(str(run_dir), str(out), options)
    assert export_run(str(run_dir), str(out), options) == first  # finished: nothing to do
    # as if killed after two tars: their records and files remain, the rest and the manifest not
    (out / "manifest.json").unlink()
    (out / "_export").mkdir()
    (out / "_export" / "plan.json").write_text(json.dumps(_plan_identity(run_dir, options)))
    for entry in first["tars"][:2]:
        (out / "_export" / entry["name"].replace(".tar", ".json")).write_text(json.dumps(entry))
    for entry in first["tars"][2:]:
        (out / entry["name"]).unlink()
    resumed = export_run(str(run_dir), str(out), options)
    assert resumed["resumed"] == 2 and resumed["tars"] == first["tars"]
    assert not (out / "_export").exists()

    with pytest.raises(UserError, match="--force"):
        export_run(str(run_dir), str(out), ExportOptions(shard_rows=70, inline=True, progress=False))
    replaced = export_run(str(run_dir), str(out), ExportOptions(shard_rows=70, inline=True, force=True,
                                                                progress=False))
    assert [t["rows"] for t in replaced["tars"]] == [70, 70, 70, 20]
    assert sorted(p.name for p in out.glob("*.tar")) == [t["name"] for t in replaced["tars"]]


def test_a_row_without_image_fails_the_tar_and_leaves_no_file(run_dir, tmp_path):
    shards = tmp_path / "run" / "shards"
    shards.mkdir(parents=True)
    table = pq.read_table(run_dir / "shards").slice(0, 90)
    images = table.column("image").to_pylist()
    images[70] = None
    table = table.set_column(table.column_names.index("image"), "image", pa.array(images, pa.binary()))
    pq.write_table(table, shards / "part-00000.parquet", row_group_size=40)
    out = tmp_path / "wds"
    with pytest.raises(UserError, match=f"row {table.column('uid')[70].as_py()} has no image"):
        export_run(str(tmp_path / "run"), str(out), ExportOptions(shard_rows=50, inline=True, progress=False))
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["000000.tar"]  # the first tar, complete


def _plan_identity(run_dir, options):
    from clipcurate.pipelines.export import plan_tars, shard_files

    source, shards = shard_files(str(run_dir))
    return plan_tars(source, shards, options)[1]


def test_open_clip_training_pipeline_reads_the_tars_and_trains_a_step(run_dir, tmp_path, ray_local, capsys,
                                                                     monkeypatch):
    """On Ray, through the command line; then open_clip_train's own webdataset pipeline
    (what ``--train-data`` builds) feeds one optimizer step of a tiny open_clip model.

    open_clip_train (<= 3.3) and webdataset >= 0.2.96 disagree at the end of every tar
    (webdataset#384, open_clip#935: ``KeyError: 'fname'``, whatever the tars hold); the
    fix the maintainers gave, ``eof_value=None``, is applied as a user would."""
    import functools

    import open_clip_train.data as open_clip_data
    from open_clip.loss import ClipLoss
    from open_clip_train.data import get_wds_dataset
    from webdataset.tariterators import tar_file_expander

    monkeypatch.setattr(open_clip_data, "tar_file_expander", functools.partial(tar_file_expander, eof_value=None))

    from clipcurate.train.model import create

    out = tmp_path / "wds"
    assert main(["export", str(run_dir), "--format", "webdataset", "--output", str(out), "--shard-rows", "80",
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tar_count"] == 3 and summary["rows"] == ROWS

    torch.manual_seed(0)
    bundle = create(str(_micro_config(tmp_path)), device="cpu")
    args = argparse.Namespace(train_data=summary["train_data"], train_num_samples=summary["train_num_samples"],
                              train_data_upsampling_factors=None, dataset_resampled=False, seed=0, batch_size=32,
                              workers=1, world_size=1)
    data = get_wds_dataset(args, bundle.preprocess_train, is_train=True, epoch=0, tokenizer=bundle.tokenizer)
    images, texts = next(iter(data.dataloader))
    assert images.shape[0] == 32 and texts.shape[0] == 32
    model = bundle.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    image_features, text_features, logit_scale = model(images, texts)[:3]
    loss = ClipLoss()(image_features, text_features, logit_scale)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _micro_config(tmp_path):
    path = tmp_path / "clip-micro.json"
    path.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
                       "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "mlp_ratio": 2.0}}))
    return path


def test_uid_subset_file_round_trips_against_the_shards(run_dir, tmp_path, capsys):
    path = tmp_path / "subset.npy"
    assert main(["export", str(run_dir), "--format", "uids", "--output", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == ROWS
    array = np.load(path)
    assert array.dtype == np.dtype("u8,u8") and array.shape == (ROWS,)
    hi, lo = array["f0"], array["f1"]
    assert np.all((hi[:-1] < hi[1:]) | ((hi[:-1] == hi[1:]) & (lo[:-1] < lo[1:])))  # sorted, unique
    uids = sorted(_shard_rows(run_dir))
    assert datacomp_to_uids(array) == uids
    # DataComp's own conversion (baselines/apply_filter.py) gives the same array
    reference = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    reference.sort()
    assert np.array_equal(array, reference)
    assert main(["export", str(run_dir), "--format", "uids", "--output", str(tmp_path / "subset.txt")]) == 2
    assert ".npy" in capsys.readouterr().err


def test_hugging_face_datasets_reads_the_shards(run_dir, tmp_path, monkeypatch):
    import datasets as hf

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    loaded = hf.load_dataset("parquet", data_files=str(run_dir / "shards" / "*.parquet"), split="train",
                             cache_dir=str(tmp_path / "hf-cache"))
    assert loaded.num_rows == ROWS
    loaded = loaded.cast_column("image", hf.Image())
    rows = _shard_rows(run_dir)
    for sample in loaded.select(range(0, ROWS, 23)):
        image = sample["image"]
        assert isinstance(image, Image.Image)
        assert image.size == (rows[sample["uid"]]["width"], rows[sample["uid"]]["height"])
        assert sample["caption"] == rows[sample["uid"]]["caption"]
