"""DataComp image-based filtering: keep pool samples whose image embedding falls in a
cluster that holds the target task's images (Gadre et al. 2023, Sec. 4.2 and App. G;
``baselines/image_based_clustering.py`` and ``apply_filter.py``).

DataComp clustered the pool's CLIP ViT-L/14 image embeddings into 100,000 k-means
clusters (faiss, 20 iterations, L2; at 12.8M rows, about 128 per cluster; larger pools
on a sample), found each ImageNet training image's nearest centroid, and kept the
pool samples whose nearest centroid is one of those. Intersected with CLIP-score
filtering it was the strongest baseline at the large and xlarge scales.

A global stage, distributed like the others:

- ``prepare`` (streaming, in actors): each kept row's ``clip_image_emb`` — the column
  ``clip_score`` stored, when its field metadata names this stage's model — or the
  shared encoder's embedding of its image, written to that column (float16, marked
  with the model) for rows that lack it. A ``clip_image_emb`` column from *another*
  model is refused in one line: two models' embeddings in one column would mix spaces.
- ``fit`` (driver): faiss k-means (L2, ``kmeans_iterations``, ``seed``) on a uid-hash
  sample of at most ``kmeans_sample`` kept rows sorted by uid, so the centroids depend
  on the rows, not on the partitioning; k = ``num_clusters`` or rows / 128 (DataComp's
  ratio) capped at ``max_clusters``. The ``target`` set (a parquet of images, or of
  embeddings from the same model) is embedded and each target image's nearest centroid
  is marked.
- ``__call__`` (actors): every kept row's nearest centroid (faiss flat L2 index over
  the centroids) goes to ``image_cluster``; rows whose centroid is not marked are
  rejected as ``image_clusters:off_target``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from clipcurate.filters._embeddings import EmbeddingSource
from clipcurate.pipelines.stage import (GlobalStage, Resources, StageConfig, ensure_columns, kept_mask, reject_rows,
                                        set_column, unit_hash)
from clipcurate.train.embedding_columns import MODEL_KEY, column_model, embedding_matrix, same_model
from clipcurate.train.heads import IMAGE_EMB

ROWS_PER_CLUSTER = 128  # DataComp: 100,000 clusters for the 12.8M-row pool


class ImageClustersConfig(StageConfig):
    model: str = Field(description="CLIP model of the image embeddings (open_clip name, local-dir:PATH or a "
                       "checkpoint folder): the one clip_score stored embeddings with, to reuse them")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or weights file for `model`")
    target: str = Field(description="parquet file or folder of target images (`image` bytes, e.g. your downstream "
                        "task's training images), or of their clip_image_emb from the same model")
    num_clusters: int | None = Field(None, ge=1, description="k of k-means; default: kept rows / 128 "
                                     "(DataComp: 100,000 for 12.8M), at most max_clusters")
    max_clusters: int = Field(100_000, ge=1, description="cap on the default k")
    kmeans_sample: int = Field(1_000_000, ge=1, description="at most this many rows (a uid-hash sample) train "
                               "k-means; every row is assigned")
    kmeans_iterations: int = Field(20, ge=1, description="k-means iterations (DataComp: 20)")
    seed: int = 0
    batch_size: int = Field(256, ge=1, description="images per forward pass when the stage embeds them itself")
    concurrency: int = Field(1, ge=1, description="actors (one per GPU when GPUs exist)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"


class ImageClusters(GlobalStage):
    """Keep samples in the k-means clusters of the pool that hold target images."""

    name = "image_clusters"
    Config = ImageClustersConfig
    reads = ("image",)

    def __init__(self, config: ImageClustersConfig | None = None, **params):
        super().__init__(config, **params)
        cfg = self.config
        self._source = EmbeddingSource(cfg.model, cfg.pretrained, device=cfg.device, precision=cfg.precision,
                                       batch_size=cfg.batch_size)
        self._dim: int | None = None
        self._centroids: np.ndarray | None = None  # float32 (k, dim)
        self._targets: np.ndarray | None = None  # bool (k,): the cluster holds a target image
        self._index = None  # faiss index over the centroids, per worker
        self._summary: dict = {}
        self._target_counts: pa.Table | None = None

    # -------------------------------------------------------------- declared surface

    @property
    def adds(self) -> dict[str, pa.DataType]:  # type: ignore[override]
        if self._dim is None:
            from clipcurate.train.clip_model import model_config

            self._dim = int(model_config(self.config.model, self.config.pretrained)["embed_dim"])
        return {"image_cluster": pa.int32(), IMAGE_EMB: pa.list_(pa.float16(), self._dim)}

    def resources(self) -> Resources:
        cfg: ImageClustersConfig = self.config
        gpu = self._centroids is None and (cfg.device == "cuda" or (cfg.device == "auto" and _cuda()))
        return Resources(num_cpus=cfg.num_cpus, num_gpus=1.0 if gpu else 0.0, batch_size=cfg.batch_size * 4,
                         concurrency=cfg.concurrency)

    # ------------------------------------------------------------------------ work

    def setup(self) -> None:
        """After fit: the faiss index over the centroids, once per actor."""
        if self._centroids is not None:
            import faiss

            self._index = faiss.IndexFlatL2(self._centroids.shape[1])
            self._index.add(self._centroids)

    def prepare(self, batch: pa.Table) -> pa.Table:
        """Every kept row's image embedding in ``clip_image_emb`` (stored, or embedded now)."""
        adds = self.adds
        rows = np.flatnonzero(kept_mask(batch))
        stored = column_model(batch.schema, IMAGE_EMB)
        if stored is not None and not same_model(stored, self._source.fingerprint):
            raise ValueError(f"{self.label}: {IMAGE_EMB} in this pool comes from {stored}, the stage's model is "
                             f"{self._source.fingerprint}: set model to the embeddings' model")
        if rows.size == 0:
            return self._mark(ensure_columns(batch, adds))
        embedded = self._source.embed(batch, rows)
        if embedded.encoded:
            index = np.full(batch.num_rows, -1, dtype=np.int64)
            index[embedded.rows] = np.arange(embedded.rows.size)
            fresh = pa.FixedSizeListArray.from_arrays(pa.array(embedded.image.reshape(-1), pa.float16()),
                                                      self._dim).take(pa.array(index, mask=index < 0))
            if IMAGE_EMB in batch.column_names:
                fresh = pc.coalesce(batch.column(IMAGE_EMB).cast(fresh.type), fresh)
            batch = set_column(batch, IMAGE_EMB, fresh)
        for rows_of, why in ((embedded.missing, "missing_image"), (embedded.failed, "decode_error")):
            mask = np.zeros(batch.num_rows, dtype=bool)
            mask[rows_of] = True
            batch = reject_rows(batch, mask, self.reason(why))
        return self._mark(ensure_columns(batch, adds))

    def fit(self, ds) -> None:
        """k-means on a uid-hash sample of the kept rows; mark the target images' clusters."""
        import faiss

        cfg: ImageClustersConfig = self.config
        ds = ds.select_columns(["uid", IMAGE_EMB])
        rows = ds.count()
        if rows == 0:
            raise ValueError(f"{self.label}: no kept rows with image embeddings to cluster")
        k = min(rows, cfg.num_clusters or min(cfg.max_clusters, max(1, rows // ROWS_PER_CLUSTER)))
        fraction = min(1.0, cfg.kmeans_sample / rows)
        seed = cfg.seed

        def sample(table: pa.Table) -> pa.Table:
            table = table.filter(pc.is_valid(table.column(IMAGE_EMB)))
            draws = unit_hash(table.column("uid").to_pylist(), "image_clusters", seed)
            return table.filter(pa.array(draws < fraction))

        parts = [t for t in ds.map_batches(sample, batch_format="pyarrow").iter_batches(batch_format="pyarrow",
                                                                                       batch_size=None)]
        fit_rows = pa.concat_tables(parts).sort_by("uid")
        points = _normalised(embedding_matrix(fit_rows.column(IMAGE_EMB)))
        k = min(k, len(points))
        kmeans = faiss.Kmeans(points.shape[1], k, niter=cfg.kmeans_iterations, seed=seed, verbose=False,
                              max_points_per_centroid=max(256, -(-len(points) // k)))
        kmeans.train(points)
        self._centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)

        target = self._target_embeddings()
        _, nearest = kmeans.index.search(target, 1)
        counts = np.bincount(nearest.ravel(), minlength=k)
        self._targets = counts > 0
        _, sample_nearest = kmeans.index.search(points, 1)
        self._target_counts = pa.table({"cluster": pa.array(np.flatnonzero(counts), pa.int32()),
                                        "target_images": pa.array(counts[counts > 0], pa.int64())})
        self._summary = {"clusters": int(k), "kmeans_rows": int(len(points)), "kept_rows": int(rows),
                         "target_images": int(len(target)), "target_clusters": int(self._targets.sum()),
                         "sample_share_in_target_clusters": round(float(self._targets[sample_nearest.ravel()].mean()), 4)}

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._centroids is None:
            raise RuntimeError(f"{self.label}: fit() over the dataset comes before __call__")
        if self._index is None:
            self.setup()
        if IMAGE_EMB not in batch.column_names:
            batch = self.prepare(batch)
        keep = kept_mask(batch)
        has = keep & pc.is_valid(batch.column(IMAGE_EMB)).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(has)
        cluster = np.full(batch.num_rows, -1, dtype=np.int64)
        if rows.size:
            points = _normalised(embedding_matrix(batch.column(IMAGE_EMB).take(pa.array(rows))))
            cluster[rows] = self._index.search(points, 1)[1].ravel()
        batch = set_column(batch, "image_cluster", pa.array(cluster.astype(np.int32), mask=cluster < 0))
        off = has & ~self._targets[np.maximum(cluster, 0)]
        return reject_rows(batch, off, self.reason("off_target"))

    def stats(self) -> dict[str, pa.Table]:
        return {"target_clusters": self._target_counts} if self._target_counts is not None else {}

    def summary(self) -> dict:
        return dict(self._summary)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_index"] = None
        state["_ready"] = False
        return state

    # ---------------------------------------------------------------------- helpers

    def _target_embeddings(self) -> np.ndarray:
        """The target set's image embeddings: stored ones from this model, else embedded here."""
        from clipcurate.train.labels import read_images_table

        table = read_images_table(self.config.target)
        if IMAGE_EMB in table.column_names and same_model(column_model(table.schema, IMAGE_EMB),
                                                          self._source.fingerprint):
            matrix = embedding_matrix(table.column(IMAGE_EMB).drop_null())
        elif "image" in table.column_names:
            images = table.column("image").drop_null().to_pylist()
            encoded = self._source.encoder().images(images, self.config.batch_size)
            matrix = encoded.image
        else:
            raise ValueError(f"{self.label}: target {self.config.target} has neither image bytes nor {IMAGE_EMB} "
                             f"from {self._source.fingerprint}")
        if len(matrix) == 0:
            raise ValueError(f"{self.label}: target {self.config.target} holds no decodable images")
        return _normalised(matrix)

    def _mark(self, batch: pa.Table) -> pa.Table:
        """Record the model on the embedding column (as clip_score does)."""
        fields = [f.with_metadata({**(f.metadata or {}), MODEL_KEY: self._source.fingerprint.encode()})
                  if f.name == IMAGE_EMB else f for f in batch.schema]
        return pa.Table.from_arrays(batch.columns, schema=pa.schema(fields, metadata=batch.schema.metadata))


def _normalised(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
