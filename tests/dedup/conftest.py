"""Fixtures for the dedup tests: a local Ray, synthetic images that perceptual hashes
can tell apart, and prepared-table builders."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray


class Images:
    """Smooth random images (8x8 noise upsampled), so distinct seeds differ in pHash."""

    @staticmethod
    def array(seed: int, size: int = 64) -> np.ndarray:
        small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))

    @staticmethod
    def encode(pixels: np.ndarray, fmt: str = "PNG", **save) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt, **save)
        return buffer.getvalue()

    @classmethod
    def png(cls, seed: int) -> bytes:
        return cls.encode(cls.array(seed))

    @classmethod
    def jpeg(cls, seed: int, quality: int) -> bytes:
        return cls.encode(cls.array(seed), "JPEG", quality=quality)

    @classmethod
    def resized(cls, seed: int, size: int) -> bytes:
        return cls.encode(np.asarray(Image.fromarray(cls.array(seed)).resize((size, size), Image.LANCZOS)))

    @classmethod
    def cropped(cls, seed: int, margin: int) -> bytes:
        pixels = cls.array(seed)
        return cls.encode(pixels[margin:-margin, margin:-margin])


@pytest.fixture
def images():
    return Images


def pool(uids, *, images=None, captions=None, scores=None, embeddings=None, reject=None) -> pa.Table:
    columns = {"uid": pa.array(uids, pa.string())}
    n = len(uids)
    columns["caption"] = pa.array(captions if captions is not None else [None] * n, pa.string())
    columns["image"] = pa.array(images if images is not None else [None] * n, pa.binary())
    if scores is not None:
        columns["clip_score"] = pa.array(scores, pa.float32())
    if embeddings is not None:
        emb = np.asarray(embeddings, dtype=np.float16)
        columns["clip_image_emb"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    columns["reject"] = pa.array(reject if reject is not None else [None] * n, pa.string())
    return pa.table(columns)


@pytest.fixture
def make_pool():
    return pool


def fit_and_apply(stage, table: pa.Table, ray, partitions: int = 2) -> pa.Table:
    """The runner's sequence for a global stage: prepare, fit on kept rows, apply."""
    prepared = stage.prepare(table)
    kept = prepared.filter(prepared.column("reject").is_null())
    stage.fit(ray.data.from_arrow(kept).repartition(partitions))
    return stage(prepared)


@pytest.fixture
def run_global(ray_local):
    return lambda stage, table, partitions=2: fit_and_apply(stage, table, ray_local, partitions)


def reasons(table: pa.Table) -> dict[str, str | None]:
    return dict(zip(table.column("uid").to_pylist(), table.column("reject").to_pylist()))


@pytest.fixture
def reasons_of():
    return reasons


def write_release(folder, table: pa.Table, stages: list[dict] | None = None, stats: dict | None = None) -> str:
    """A release folder as ``curate run`` leaves it, made by hand: one shard of ``table``
    and a manifest that lists it (with ``stages`` entries and ``stats`` tables)."""
    import json

    import pyarrow.parquet as pq

    shards = folder / "shards"
    shards.mkdir(parents=True)
    pq.write_table(table, shards / "part-00000.parquet")
    listed = {}
    for key, stat in (stats or {}).items():
        (folder / "stats").mkdir(exist_ok=True)
        pq.write_table(stat, folder / "stats" / f"{key}.parquet")
        listed[key] = f"stats/{key}.parquet"
    manifest = {
        "totals": {"input": table.num_rows, "kept": table.num_rows, "rejected": 0},
        "shards": [{"path": "shards/part-00000.parquet", "rows": table.num_rows,
                    "bytes": (shards / "part-00000.parquet").stat().st_size}],
        "stages": stages or [], "stats": listed, "fingerprint": {"input": "test"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)


@pytest.fixture
def release_context(tmp_path):
    """``release_context(table, ...)``: a RunContext against one hand-made release."""
    from clipcurate.pipelines.release import open_context

    def make(table: pa.Table, name: str = "release", **kwargs):
        location = write_release(tmp_path / name, table, **kwargs)
        return open_context([location], cache=str(tmp_path / "cache"))

    return make
