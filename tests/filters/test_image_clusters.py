"""image_clusters (DataComp image-based filter): on a synthetic pool of well-separated
embedding clusters it keeps exactly the clusters that hold target images; it embeds
pool and target images itself when no embeddings are stored; embeddings of another
model are refused; one run through the engine on Ray."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clipcurate.filters.image_clusters import ImageClusters
from clipcurate.train.clip_model import load_clip, model_fingerprint
from clipcurate.train.embedding_columns import MODEL_KEY

MODEL, PRETRAINED = "ViT-B-32", "openai"  # named only: its embeddings here are synthetic, nothing is loaded
DIM = 512
CLUSTERS, PER_CLUSTER = 8, 60
TARGET_CLUSTERS = (0, 3)


def embedding_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.astype(np.float16).reshape(-1), pa.float16()),
                                             matrix.shape[1])


def marked(table: pa.Table, fingerprint: str) -> pa.Table:
    fields = [f.with_metadata({MODEL_KEY: fingerprint.encode()}) if f.name == "clip_image_emb" else f
              for f in table.schema]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields))


def synthetic(seed: int = 0):
    """Pool rows around 8 random directions (cosine ~0.95 to their centre), and target
    embeddings drawn around centres 0 and 3 only."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def around(centre: int, n: int) -> np.ndarray:
        points = centres[centre] + rng.normal(scale=0.3 / np.sqrt(DIM), size=(n, DIM)) * 3
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    labels = np.repeat(np.arange(CLUSTERS), PER_CLUSTER)
    pool = np.concatenate([around(c, PER_CLUSTER) for c in range(CLUSTERS)])
    order = rng.permutation(len(pool))
    labels, pool = labels[order], pool[order]
    target = np.concatenate([around(c, 10) for c in TARGET_CLUSTERS])
    return pool, labels, target


def pool_table(embeddings: np.ndarray, fingerprint: str) -> pa.Table:
    n = len(embeddings)
    table = pa.table({"uid": [f"{i:032x}" for i in range(n)], "url": [f"http://x.test/{i}" for i in range(n)],
                      "caption": ["a picture"] * n, "image": pa.nulls(n, pa.binary()),
                      "clip_image_emb": embedding_column(embeddings), "reject": pa.nulls(n, pa.string())})
    return marked(table, fingerprint)


@pytest.fixture
def target_file(tmp_path):
    def write(embeddings: np.ndarray, fingerprint: str) -> str:
        path = tmp_path / "target.parquet"
        pq.write_table(marked(pa.table({"clip_image_emb": embedding_column(embeddings)}), fingerprint), path)
        return str(path)
    return write


def run_stage(stage: ImageClusters, table: pa.Table) -> pa.Table:
    import ray.data

    prepared = stage.prepare(table)
    stage.fit(ray.data.from_arrow(prepared.filter(prepared.column("reject").is_null())))
    return stage(prepared)


def test_keeps_exactly_the_clusters_holding_target_images(ray_local, target_file):
    fingerprint = model_fingerprint(MODEL, PRETRAINED)
    pool, labels, target = synthetic()
    stage = ImageClusters(model=MODEL, pretrained=PRETRAINED, target=target_file(target, fingerprint),
                          num_clusters=CLUSTERS)
    out = run_stage(stage, pool_table(pool, fingerprint))
    kept = out.column("reject").is_null().to_numpy(zero_copy_only=False)
    assert (kept == np.isin(labels, TARGET_CLUSTERS)).all()
    assert set(out.column("reject").drop_null().to_pylist()) == {"image_clusters:off_target"}
    clusters = np.array(out.column("image_cluster").to_pylist())
    assert clusters.min() >= 0 and clusters.max() < CLUSTERS  # every row assigned, kept or not
    summary = stage.summary()
    assert summary["clusters"] == CLUSTERS and summary["target_clusters"] == 2 and summary["target_images"] == 20
    assert stage.stats()["target_clusters"].column("target_images").to_pylist() == [10, 10]


def test_default_k_and_sample(ray_local, target_file):
    fingerprint = model_fingerprint(MODEL, PRETRAINED)
    pool, labels, target = synthetic(1)
    stage = ImageClusters(model=MODEL, pretrained=PRETRAINED, target=target_file(target, fingerprint),
                          kmeans_sample=200)
    run_stage(stage, pool_table(pool, fingerprint))
    # 480 rows / 128 per cluster (DataComp's ratio) = 3 clusters, fitted on a uid-hash sample of ~200
    assert stage.summary()["clusters"] == 3 and 150 <= stage.summary()["kmeans_rows"] <= 250


def test_embeddings_of_another_model_are_refused(target_file):
    pool, _, target = synthetic()
    stage = ImageClusters(model=MODEL, pretrained=PRETRAINED,
                          target=target_file(target, model_fingerprint(MODEL, PRETRAINED)))
    with pytest.raises(ValueError) as err:
        stage.prepare(pool_table(pool, model_fingerprint("RN50", "openai")))
    assert "\n" not in str(err.value) and "RN50" in str(err.value) and "ViT-B-32" in str(err.value)


def coloured(rgb, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb) + rng.normal(0, 12, (40, 40, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_embeds_pool_and_target_images_itself(ray_local, tmp_path):
    """No stored embeddings: the encoder embeds the pool (prepare) and the target (fit);
    the pool's red pictures are kept, the other colours rejected."""
    torch.manual_seed(0)
    weights = tmp_path / "tiny.bin"
    torch.save(load_clip("clip-tiny").model.state_dict(), weights)
    colours = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}
    names = [name for name in colours for _ in range(20)]
    images = [coloured(colours[name], i) for i, name in enumerate(names)]
    n = len(images)
    table = pa.table({"uid": [f"{i:032x}" for i in range(n)], "caption": ["x"] * n,
                      "image": pa.array(images, pa.binary()), "reject": pa.nulls(n, pa.string())})
    target = tmp_path / "target.parquet"
    pq.write_table(pa.table({"image": [coloured(colours["red"], 1000 + i) for i in range(5)],
                             "label": ["red"] * 5}), target)
    stage = ImageClusters(model="clip-tiny", pretrained=str(weights), target=str(target), num_clusters=4,
                          device="cpu")
    out = run_stage(stage, table)
    kept = np.array(names)[out.column("reject").is_null().to_numpy(zero_copy_only=False)]
    assert set(kept) == {"red"} and len(kept) == 20
    emb_field = out.schema.field("clip_image_emb")
    assert emb_field.metadata[MODEL_KEY] == model_fingerprint("clip-tiny", str(weights)).encode()
