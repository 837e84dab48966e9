"""Exact image dedup: identical decoded pixels (or identical bytes).

Web pools hold many byte-identical re-uploads, and as many again that are the same
pixels in another container (PNG vs lossless WebP, stripped EXIF, re-muxed JPEG).
Hashing the decoded pixels catches both; the raw-bytes SHA-256 is kept as a column too
(img2dataset's ``sha256`` column) so byte-level provenance stays auditable. Lossy
re-encodes change the pixels and are the perceptual stage's job.
"""

from __future__ import annotations

import hashlib
import io
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image

from clipcurate.dedup import _against, _groups
from clipcurate.pipelines.stage import StageConfig, ensure_columns, kept_mask, set_column


class ExactDedupConfig(StageConfig):
    key: Literal["pixels", "bytes"] = "pixels"
    """``pixels``: SHA-256 of the decoded RGB pixels and size; ``bytes``: of the file."""


class ExactDedup(_groups.DedupStage):
    """One survivor per set of identical images; the others get
    ``dedup_exact:duplicate_of=<uid>`` (keep rule: highest clip_score, then smallest uid)."""

    name = "dedup_exact"
    Config = ExactDedupConfig
    reads = ("uid", "image")
    adds = {"image_sha256": pa.string(), "pixel_hash": pa.string()}

    def prepare(self, batch: pa.Table) -> pa.Table:
        kept = kept_mask(batch)
        images = batch.column("image").to_pylist()
        raw = [hashlib.sha256(b).hexdigest() if k and b is not None else None for b, k in zip(images, kept)]
        batch = set_column(batch, "image_sha256", pa.array(raw, pa.string()))
        if self.config.key == "pixels":
            pixels = [_pixel_sha256(b) if k and b is not None else None for b, k in zip(images, kept)]
            batch = set_column(batch, "pixel_hash", pa.array(pixels, pa.string()))
        return ensure_columns(batch, self.adds)

    def fit(self, ds) -> None:
        key = self._key_column()
        ds = ds.select_columns([key, *_groups.rank_columns(ds.columns())])
        ds = ds.map_batches(lambda t: t.filter(t.column(key).is_valid()), batch_format="pyarrow")
        # a release's shards hold the column when dedup_exact made it (a pure function of the bytes)
        ds, against = _against.with_releases(self, ds, [key], spec={"key": self.config.key}, stored=lambda r: True,
                                             derive=self.prepare, reads=("image",))
        duplicates, self._comparisons = _groups.link_buckets(ds, [key], _all_linked, against=against)
        self._duplicates = _groups.DuplicateLookup(duplicates)

    def summary(self) -> dict:
        return {"key": self.config.key, **super().summary()}

    def _key_column(self) -> str:
        return "pixel_hash" if self.config.key == "pixels" else "image_sha256"


def _all_linked(shard: pa.Table, starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Every member of an exact-hash bucket is the same image: link each to the first (no check)."""
    rows, run = _groups.run_rows(starts, sizes)
    rest = rows != starts[run]
    return rows[rest], starts[run][rest], 0


def _pixel_sha256(data: bytes) -> str | None:
    """SHA-256 of (width, height, RGB pixels); None when the bytes do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except Exception:  # an undecodable image has no pixels to compare
        return None
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()
