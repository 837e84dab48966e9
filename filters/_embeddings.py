"""CLIP embeddings of a batch's rows for the stages that read them (clip_heads,
image_clusters): the columns clip_score stored when they come from the same model, the
shared encoder (``train/clip_model.py``) for the rest. Never a second forward for a row
that already has its embedding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.train.embedding_columns import column_model, embedding_matrix, same_model
from clipcurate.train.heads import IMAGE_EMB, TEXT_EMB


@dataclass
class RowEmbeddings:
    """Embeddings of some rows of a batch, in the order of ``rows``."""

    rows: np.ndarray  # batch row indices that have an image embedding
    image: np.ndarray  # float32 (len(rows), dim)
    text: np.ndarray | None  # float32 (len(rows), dim) when asked for
    failed: np.ndarray  # batch row indices whose image bytes did not decode
    missing: np.ndarray  # batch row indices with neither a stored embedding nor image bytes
    encoded: int  # rows that went through the model


class EmbeddingSource:
    """Embeddings from one CLIP model: stored columns of that model, else the encoder
    (built on first use, per worker; never pickled)."""

    def __init__(self, model: str, pretrained: str | None, *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 256):
        self.model, self.pretrained = model, pretrained
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self._fingerprint: str | None = None
        self._encoder = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from clipcurate.train.clip_model import model_fingerprint

            self._fingerprint = model_fingerprint(self.model, self.pretrained)
        return self._fingerprint

    def stored(self, schema: pa.Schema, column: str = IMAGE_EMB) -> bool:
        """The batch holds ``column`` written by this model."""
        return same_model(column_model(schema, column), self.fingerprint)

    def embed(self, batch: pa.Table, rows: np.ndarray, *, text: bool = False) -> RowEmbeddings:
        """Image (and caption) embeddings of ``rows``: stored ones where the batch has
        them from this model, the encoder for the others."""
        have = np.zeros(batch.num_rows, dtype=bool)
        if self.stored(batch.schema) and (not text or self.stored(batch.schema, TEXT_EMB)):
            have[rows] = True
            have &= pc.is_valid(batch.column(IMAGE_EMB)).to_numpy(zero_copy_only=False)
            if text:
                have &= pc.is_valid(batch.column(TEXT_EMB)).to_numpy(zero_copy_only=False)
        reuse = np.flatnonzero(have)
        parts_rows, parts_image, parts_text = [reuse], [], []
        if reuse.size:
            parts_image.append(embedding_matrix(batch.column(IMAGE_EMB).take(pa.array(reuse))))
            if text:
                parts_text.append(embedding_matrix(batch.column(TEXT_EMB).take(pa.array(reuse))))
        todo = np.setdiff1d(rows, reuse)
        failed = missing = np.zeros(0, np.int64)
        if todo.size:
            has_image = pc.is_valid(batch.column("image")).to_numpy(zero_copy_only=False)[todo]
            missing, todo = todo[~has_image], todo[has_image]
        if todo.size:
            encoder = self.encoder()
            encoded = encoder.images(batch.column("image").take(pa.array(todo)).to_pylist(), self.batch_size)
            failed, done = todo[~encoded.decoded], todo[encoded.decoded]
            parts_rows.append(done)
            parts_image.append(encoded.image)
            if text:
                captions = pc.fill_null(batch.column("caption").take(pa.array(done)), "").to_pylist()
                parts_text.append(encoder.texts(captions, self.batch_size))
        all_rows = np.concatenate(parts_rows)
        order = np.argsort(all_rows, kind="stable")
        image = np.concatenate(parts_image)[order] if parts_image else np.zeros((0, 0), np.float32)
        text_out = (np.concatenate(parts_text)[order] if parts_text else np.zeros((0, 0), np.float32)) if text else None
        return RowEmbeddings(rows=all_rows[order], image=image, text=text_out, failed=failed, missing=missing,
                             encoded=int(all_rows.size - reuse.size))

    def encoder(self):
        if self._encoder is None:
            from clipcurate.train.clip_model import Encoder

            self._encoder = Encoder(self.model, self.pretrained, device=self.device, precision=self.precision)
        return self._encoder

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_encoder"] = None
        return state
