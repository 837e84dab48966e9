"""``curate index`` / ``curate search``: planted near-duplicates of a query image come back
first, results agree with brute force, a query model that did not make the embeddings is
refused, and the audit shows nearest neighbours."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from clipcurate.curation.search import build_index, make_index, open_index
from clipcurate.pipelines.cli import main
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.stage import make_uid
from clipcurate.train import datasets

MICRO = {"embed_dim": 32,
         "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16, "mlp_ratio": 2.0},
         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "mlp_ratio": 2.0}}


@pytest.fixture(autouse=True)
def one_thread():
    """One thread for torch and faiss: OpenMP barriers spin on a shared 2-core machine."""
    import faiss

    threads, omp = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(omp)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _query_image() -> Image.Image:
    """A picture unlike the shapes: stripes and a checker corner."""
    image = Image.new("RGB", (32, 32), (250, 240, 200))
    draw = ImageDraw.Draw(image)
    for x in range(0, 32, 6):
        draw.rectangle([x, 0, x + 2, 31], fill=(20, 90, 160))
    draw.rectangle([20, 20, 31, 31], fill=(200, 30, 120))
    return image


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-model")
    images, _, captions = datasets.shapes(256, seed=5)
    datasets.write_shards(root / "train", images, captions, rows_per_shard=256)
    (root / "micro.json").write_text(json.dumps(MICRO))
    torch.set_num_threads(1)
    assert main(["train", "--data", str(root / "train"), "--model", str(root / "micro.json"), "--steps", "40",
                 "--batch-size", "32", "--lr", "2e-3", "--output", str(root / "ckpt"), "--quiet"]) == 0
    return root / "ckpt"


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    """A run of 300 shapes plus 4 near-duplicates of the query picture (blurred, shifted,
    recoloured a little), embedded as the clip_score stage stores them."""
    from clipcurate.train.clip_model import Encoder
    from clipcurate.train.embedding_columns import MODEL_KEY

    root = tmp_path_factory.mktemp("search-run") / "run"
    images, _, captions = datasets.shapes(300, seed=9)
    base = _query_image()
    planted = [base.filter(ImageFilter.GaussianBlur(0.6)), base.transform((32, 32), Image.AFFINE, (1, 0, 1, 0, 1, 0)),
               Image.eval(base, lambda v: min(255, v + 12)), base.rotate(3, fillcolor=(250, 240, 200))]
    images = images[:150] + planted[:2] + images[150:] + planted[2:]
    captions = captions[:150] + ["striped poster copy 1", "striped poster copy 2"] + captions[150:] + \
        ["striped poster copy 3", "striped poster copy 4"]
    encoded = [_png(i) for i in images]
    encoder = Encoder(str(model), device="cpu")
    result = encoder.images(encoded)
    assert result.decoded.all()
    urls = [f"https://img.example/{i}.png" for i in range(len(images))]
    field = pa.field("clip_image_emb", pa.list_(pa.float16(), 32), metadata={MODEL_KEY: encoder.fingerprint.encode()})
    table = pa.table({"uid": [make_uid(u, c) for u, c in zip(urls, captions)], "url": urls, "caption": captions,
                      "image": pa.array(encoded, pa.binary()),
                      "clip_image_emb": pa.FixedSizeListArray.from_arrays(
                          pa.array(result.image.astype(np.float16).ravel()), 32)})
    table = table.cast(table.schema.set(table.schema.get_field_index("clip_image_emb"), field))
    (root / "shards").mkdir(parents=True)
    pq.write_table(table.slice(0, 160), root / "shards" / "part-00000.parquet", row_group_size=50)
    pq.write_table(table.slice(160), root / "shards" / "part-00001.parquet", row_group_size=50)
    # rejects: a duplicate group of 3 around a kept row, as dedup writes them
    original = table.column("uid")[10].as_py()
    rejects = pa.table({"uid": ["d1", "d2", "d3", "x"], "reject": [f"dedup_exact:duplicate_of={original}"] * 3 +
                        ["basic_filter:too_few_words"]})
    (root / "rejects").mkdir()
    pq.write_table(rejects, root / "rejects" / "part-00000.parquet")
    return root


def test_image_search_returns_the_planted_near_duplicates_first(run_dir, tmp_path, capsys):
    assert main(["index", str(run_dir)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["kind"] == "flat" and info["rows"] == 304 and info["dim"] == 32 and "|" in info["model"]
    query = tmp_path / "query.png"
    query.write_bytes(_png(_query_image()))
    page = tmp_path / "hits.html"
    assert main(["search", str(run_dir), "--image", str(query), "-k", "8", "--html", str(page), "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(hits) == 8 and [h["rank"] for h in hits] == list(range(1, 9))
    assert sorted(h["caption"] for h in hits[:4]) == [f"striped poster copy {i}" for i in range(1, 5)]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    text = page.read_text()
    assert text.count('class="card kept"') == 8 and "data:image/jpeg;base64," in text

    assert main(["search", str(run_dir), "--text", "a red circle", "-k", "3", "--html", str(tmp_path / "t.html")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_every_index_kind_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 32))
    vectors = centres[rng.integers(0, 30, 3000)] + 0.35 * rng.standard_normal((3000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    queries = vectors[:50] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    for kind, floor in (("flat", 1.0), ("hnsw", 0.95), ("ivfpq", 0.9)):
        index, params = make_index(kind, vectors)
        if kind == "hnsw":  # the defaults bench/search.py measured, recorded as built
            assert params == {"M": 32, "efConstruction": 40, "efSearch": 128}
            assert (index.hnsw.efConstruction, index.hnsw.efSearch) == (40, 128)
        _, ids = index.search(queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
        assert recall >= floor, (kind, recall)


def _copy_run(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    build_index(str(copy), log=lambda *_: None)
    return copy


def test_an_index_file_declaring_more_than_it_holds_is_refused_with_bounded_memory(run_dir, tmp_path):
    import psutil
    from hostile_models import faiss_header_declaring

    run = _copy_run(run_dir, tmp_path)
    (run / "index" / "image.faiss").write_bytes(faiss_header_declaring(32, 750_000_000))
    before = psutil.Process().memory_info().rss
    with pytest.raises(UserError, match="declares more memory than it contains"):
        open_index(str(run))
    assert psutil.Process().memory_info().rss - before < 200 << 20
    index = json.loads((run / "index" / "index.json").read_text())
    (run / "index" / "index.json").write_text(json.dumps({**index, "rows": 5}))
    build_index(str(run), force=True, log=lambda *_: None)
    (run / "index" / "index.json").write_text(json.dumps({**json.loads((run / "index" / "index.json").read_text()),
                                                          "rows": 5}))
    with pytest.raises(UserError, match="index.json says 5"):
        open_index(str(run))


def test_search_checks_the_indexs_model_before_loading_any_model(run_dir, tmp_path):
    from hostile_models import remote_code_checkpoint

    from clipcurate.curation.search import search_run
    from clipcurate.train.clip_model import model_fingerprint

    run = _copy_run(run_dir, tmp_path)
    marker = tmp_path / "MARKER"
    hostile = remote_code_checkpoint(tmp_path / "hostile", marker)
    info_path = run / "index" / "index.json"
    info = json.loads(info_path.read_text())
    # index.json names the hostile folder under the run's own digest: refused before loading
    info_path.write_text(json.dumps({**info, "model": f"{hostile}|None|{info['model'].rsplit('|', 1)[1]}"}))
    with pytest.raises(UserError, match="model mismatch"):
        search_run(str(run), text="stripes")
    assert not marker.exists()
    # index.json and the shards disagree about the model: refused before loading
    info_path.write_text(json.dumps({**info, "model": model_fingerprint(hostile)}))
    with pytest.raises(UserError, match="index.json names the model"):
        search_run(str(run), text="stripes")
    assert not marker.exists()


def test_a_query_model_other_than_the_index_model_is_refused(run_dir, model, tmp_path, capsys):
    import shutil

    from clipcurate.train.clip_model import WEIGHTS_FILE

    build_index(str(run_dir), log=lambda *_: None)
    other = tmp_path / "other-ckpt"
    shutil.copytree(model, other)
    weights = torch.load(other / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}, other / WEIGHTS_FILE)
    assert main(["search", str(run_dir), "--text", "stripes", "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "model mismatch" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UserError, match="shards changed"):
        stale = pq.read_table(run_dir / "shards" / "part-00001.parquet")
        pq.write_table(stale.slice(1), tmp_path / "x.parquet")
        (run_dir / "shards" / "part-00001.parquet").write_bytes((tmp_path / "x.parquet").read_bytes())
        open_index(str(run_dir))


def test_audit_section_shows_neighbours_of_samples_and_duplicate_groups(run_dir):
    from clipcurate.curation.search import audit_neighbours

    build_index(str(run_dir), force=True, log=lambda *_: None)
    section = audit_neighbours(run_dir, samples=3, groups=2, k=4)
    assert section.count('class="grid neighbours"') == 4  # 3 samples + the one duplicate group
    assert "kept original, 3 removed" in section
