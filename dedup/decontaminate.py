"""Eval-set decontamination: drop pool samples that are near-duplicates of eval items.

A training pool scraped from the web contains copies of benchmark images (re-encoded,
resized, re-captioned), which inflates zero-shot results (CLIP, Radford et al. 2021,
Sec. 5 "data overlap analysis"; DataComp, Gadre et al. 2023, removes near-duplicates
of its evaluation sets from the pool). A pool row is rejected as
``decontaminate:near_eval=<eval id>`` when it is

* perceptually near an eval image (pHash/dHash within a Hamming radius), or
* semantically near one (cosine of ``clip_image_emb`` >= min_cosine; used when the eval
  parquet carries a ``clip_image_emb`` column, e.g. scored by the same clip_score stage), or
* (optionally) its caption is near an eval caption (exact shingle Jaccard >= threshold,
  candidates from a datasketch MinHashLSH index).

The eval set is small next to the pool, so this is a per-sample stage: ``setup`` loads
and indexes the eval parquet once per worker, and each batch is compared against it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
from pydantic import Field

from clipcurate.dedup.minhash import jaccard, shingles
from clipcurate.dedup.perceptual import hamming, image_hash
from clipcurate.dedup.semantic import EMBEDDING, embeddings
from clipcurate.pipelines.stage import Stage, StageConfig, kept_mask, reject_rows


class DecontaminateConfig(StageConfig):
    eval_path: str
    """Parquet file or folder (local or fsspec URI) of the eval/labeled set."""
    image_column: str = "image"
    caption_column: str = "caption"
    id_column: str = "uid"
    """Eval id reported in the reason; the row index when the column is absent."""
    hash: Literal["phash", "dhash"] = "phash"
    max_distance: int = Field(4, ge=0, le=32)
    min_cosine: float = Field(0.95, gt=0.0, le=1.0)
    caption_threshold: float | None = Field(None, gt=0.0, le=1.0)
    """Jaccard of word shingles (as dedup_minhash); None: captions are not compared."""
    num_perm: int = Field(128, ge=8, le=1024)


class Decontaminate(Stage):
    """Reject pool samples that are near-duplicates of any eval item."""

    name = "decontaminate"
    Config = DecontaminateConfig
    reads = ("uid", "image")
    adds: dict[str, pa.DataType] = {}

    def setup(self) -> None:
        cfg = self.config
        table = pds.dataset(cfg.eval_path, format="parquet").to_table()
        names = table.column_names
        if cfg.id_column in names:
            self._eval_ids = np.array([str(v) for v in table.column(cfg.id_column).to_pylist()], dtype=object)
        else:
            self._eval_ids = np.array([str(i) for i in range(table.num_rows)], dtype=object)
        self._hashes = self._emb = self._lsh = None
        if cfg.image_column in names:
            values = [image_hash(b, cfg.hash) if b is not None else None for b in table.column(cfg.image_column).to_pylist()]
            has = np.array([v is not None for v in values], dtype=bool)
            self._hashes = np.array([v for v in values if v is not None], dtype=np.uint64)
            self._hash_rows = np.flatnonzero(has)
        if EMBEDDING in names:
            valid = table.column(EMBEDDING).is_valid().to_numpy(zero_copy_only=False)
            self._emb = embeddings(table.filter(pa.array(valid)))
            self._emb_rows = np.flatnonzero(valid)
        if cfg.caption_threshold is not None and cfg.caption_column in names:
            self._build_caption_index(table.column(cfg.caption_column).to_pylist())
        if self._hashes is None and self._emb is None and self._lsh is None:
            raise ValueError(
                f"decontaminate.eval_path {cfg.eval_path}: no '{cfg.image_column}', '{EMBEDDING}' "
                f"or (with caption_threshold) '{cfg.caption_column}' column to compare against"
            )

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        kept = kept_mask(batch)
        match = np.full(batch.num_rows, -1, dtype=np.int64)  # eval row index, -1: none
        if self._hashes is not None and len(self._hashes) and "image" in batch.column_names:
            self._match_images(batch, kept, match)
        if self._emb is not None and len(self._emb) and EMBEDDING in batch.column_names:
            self._match_embeddings(batch, kept & (match < 0), match)
        if self._lsh is not None and "caption" in batch.column_names:
            self._match_captions(batch, kept & (match < 0), match)
        mask = match >= 0
        if not mask.any():
            return batch
        reasons = np.full(batch.num_rows, None, dtype=object)
        reasons[mask] = [self.reason(f"near_eval={i}") for i in self._eval_ids[match[mask]]]
        return reject_rows(batch, mask, reasons)

    def _match_images(self, batch: pa.Table, todo: np.ndarray, match: np.ndarray) -> None:
        images = batch.column("image").to_pylist()
        rows = [i for i in np.flatnonzero(todo) if images[i] is not None]
        values = [image_hash(images[i], self.config.hash) for i in rows]
        rows = np.array([r for r, v in zip(rows, values) if v is not None], dtype=np.int64)
        if not len(rows):
            return
        pool = np.array([v for v in values if v is not None], dtype=np.uint64)
        distance = hamming(pool[:, None], self._hashes[None, :])
        nearest = distance.argmin(1)
        near = distance[np.arange(len(rows)), nearest] <= self.config.max_distance
        match[rows[near]] = self._hash_rows[nearest[near]]

    def _match_embeddings(self, batch: pa.Table, todo: np.ndarray, match: np.ndarray) -> None:
        valid = todo & batch.column(EMBEDDING).is_valid().to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(valid)
        if not len(rows):
            return
        similarity = embeddings(batch.take(pa.array(rows))) @ self._emb.T
        nearest = similarity.argmax(1)
        near = similarity[np.arange(len(rows)), nearest] >= self.config.min_cosine
        match[rows[near]] = self._emb_rows[nearest[near]]

    def _match_captions(self, batch: pa.Table, todo: np.ndarray, match: np.ndarray) -> None:
        captions = batch.column("caption").to_pylist()
        for row in np.flatnonzero(todo):
            if captions[row] is None:
                continue
            shingle_set = shingles(captions[row], "word", 1)
            if not shingle_set:
                continue
            sketch = self._template.copy()
            sketch.update_batch([s.encode() for s in shingle_set])
            candidates = sorted(self._lsh.query(sketch))
            for candidate in candidates:
                if jaccard(shingle_set, self._caption_shingles[candidate]) >= self.config.caption_threshold:
                    match[row] = candidate
                    break

    def _build_caption_index(self, captions: list[str | None]) -> None:
        from datasketch import MinHash, MinHashLSH

        threshold = self.config.caption_threshold
        self._lsh = MinHashLSH(threshold=max(0.3, threshold - 0.15), num_perm=self.config.num_perm)
        self._caption_shingles = {}
        self._template = MinHash(num_perm=self.config.num_perm)
        for row, caption in enumerate(captions):
            shingle_set = shingles(caption, "word", 1) if caption is not None else set()
            if not shingle_set:
                continue
            sketch = self._template.copy()
            sketch.update_batch([s.encode() for s in shingle_set])
            self._lsh.insert(row, sketch)
            self._caption_shingles[row] = shingle_set
