"""The contract of embedding columns (``clip_image_emb``, ``clip_text_emb``): the field
metadata that names the model that made them, and their values as a matrix. Free of
torch, so readers (search, dedup, the audit) use it without loading the model stack."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MODEL_KEY = b"clipcurate.model"  # field metadata: the fingerprint of the model that made a column


def column_model(schema: pa.Schema, column: str) -> str | None:
    """The fingerprint of the model that wrote an embedding column, or None."""
    if column not in schema.names:
        return None
    value = (schema.field(column).metadata or {}).get(MODEL_KEY)
    return value.decode() if value else None


def same_model(a: str | None, b: str | None) -> bool:
    """Two model fingerprints (``spec|pretrained|digest``, ``train.clip_model.model_fingerprint``)
    name the same model: equal digests, however the spec was spelled (``local-dir:PATH``,
    ``PATH``, a copy elsewhere)."""
    return bool(a) and bool(b) and a.rsplit("|", 1)[-1] == b.rsplit("|", 1)[-1]


def embedding_matrix(values, *, normalise: bool = False) -> np.ndarray:
    """A fixed-size-list (or list) embedding column without nulls as float32 (rows, dim),
    optionally L2-normalised."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.zeros((0, 0), np.float32)
    matrix = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(values), -1)
    if normalise:
        matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return matrix
