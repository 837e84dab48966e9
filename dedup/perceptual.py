"""Perceptual image dedup: near-identical images within a Hamming radius of pHash/dHash.

Re-encodes at other JPEG qualities and resized copies change every byte but barely
move a perceptual hash (pHash: Zauner 2010; dHash: Krawetz 2013; both from the
``imagehash`` library). Near pairs are found without comparing all pairs, by the
pigeonhole principle (Manku et al. 2007, "Detecting near-duplicates for web
crawling"): split the 64 bits into r + 1 bands; two hashes within distance r agree
exactly on at least one band, so candidates are rows sharing a band value, and each
candidate is then verified on the exact Hamming distance of every listed hash, against
a few representatives of its bucket (``_groups.value_pairs``: a bucket of near-blank
placeholders or near-identical product shots costs linear, not quadratic, checks).

The default (pHash *and* dHash within 4 bits) was measured (``bench/perceptual_radius.py``,
docs/dedup.md) on 2,220 distinct real images, 17,340 in all: windows of scikit-image's
bundled photos and of Debian's nature wallpapers, its textures, and Fashion-MNIST
products, each with JPEG/WebP re-encodes, resizes, 2-5 % crops and +-8 % brightness as
true duplicates: pair precision 0.9998 overall and >= 0.9995 on every kind, recall 0.76.
pHash alone passes the same rule only up to radius 2 (0.9998, recall 0.72); at radius 4
it merged look-alike products of one class (precision 0.986 on them), and the former
default (pHash, 6) far more (0.904). On the web-like benchmark pool of product photos
(``curation/pools.py``) pHash at 2 still merged about 3 % of distinct clean products,
both hashes at 4 almost none, at the same duplicate recall. pHash marks the 32 of its
64 DCT coefficients above their median (on every image measured), so its distances
are even.
"""

from __future__ import annotations

import io
from typing import Literal

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field

from clipcurate.dedup import _against, _groups
from clipcurate.pipelines.stage import StageConfig, ensure_columns, kept_mask, set_column

HASH_BITS = 64
DEFAULT_HASHES = ("phash", "dhash")  # measured by bench/perceptual_radius.py (module docstring)
DEFAULT_MAX_DISTANCE = 4
PHASH_RADIUS = 2  # pHash alone: the widest radius with precision >= 0.99 on every kind


class PerceptualDedupConfig(StageConfig):
    hashes: tuple[Literal["phash", "dhash"], ...] = Field(
        DEFAULT_HASHES, min_length=1,
        description="hashes a pair must be near on (all of them); the first one is bucketed"
    )
    max_distance: int = Field(
        DEFAULT_MAX_DISTANCE,
        ge=0,
        le=31,
        description="Hamming radius (inclusive) on each 64-bit hash; 4 on pHash and dHash measured on real photos "
        "and products (precision 0.9998, recall 0.76); with pHash alone use 2",
    )


class PerceptualDedup(_groups.DedupStage):
    """One survivor per group of perceptually near-identical images; the others get
    ``dedup_perceptual:duplicate_of=<uid>`` (keep rule: highest clip_score, then uid)."""

    name = "dedup_perceptual"
    Config = PerceptualDedupConfig
    reads = ("uid", "image")
    adds = {"phash": pa.uint64(), "dhash": pa.uint64()}

    def prepare(self, batch: pa.Table) -> pa.Table:
        kept = kept_mask(batch)
        images = batch.column("image").to_pylist()
        hashes = [image_hashes(b, self.config.hashes) if k and b is not None else None for b, k in zip(images, kept)]
        for index, kind in enumerate(self.config.hashes):
            values = [h[index] if h is not None else None for h in hashes]
            batch = set_column(batch, kind, pa.array(values, pa.uint64()))
        return ensure_columns(batch, self.adds)

    def fit(self, ds) -> None:
        kinds = list(self.config.hashes)
        ds = ds.select_columns([*kinds, *_groups.rank_columns(ds.columns())])
        max_distance = self.config.max_distance

        def explode(table: pa.Table) -> pa.Table:
            valid = np.ones(table.num_rows, dtype=bool)
            for kind in kinds:
                valid &= table.column(kind).is_valid().to_numpy(zero_copy_only=False)
            table = table.filter(pa.array(valid))
            values = hash_bands(table.column(kinds[0]).to_numpy(zero_copy_only=False), max_distance)
            parts = []
            for band in range(values.shape[1]):
                parts.append(
                    table.append_column("band", pa.array(np.full(table.num_rows, band, np.int32))).append_column(
                        "bucket", pa.array(values[:, band])
                    )
                )
            return pa.concat_tables(parts)

        def near_pairs(shard: pa.Table, starts: np.ndarray, sizes: np.ndarray):
            values = np.stack([shard.column(k).to_numpy(zero_copy_only=False).astype(np.uint64) for k in kinds], 1)
            distinct, value_ids = np.unique(values, axis=0, return_inverse=True)

            def within(a, b):
                return (hamming(distinct[a], distinct[b]) <= max_distance).all(axis=1)

            rows, run = _groups.run_rows(starts, sizes)
            rank = _groups.member_rank(shard, rows, kinds)
            return _groups.value_pairs(value_ids.reshape(-1), rows, run, rank, within)

        # pHash/dHash are pure functions of the image bytes: a release's stored columns serve as they are
        ds, against = _against.with_releases(self, ds, kinds, spec={"hashes": kinds}, stored=lambda r: True,
                                             derive=self.prepare, reads=("image",))
        exploded = ds.map_batches(explode, batch_format="pyarrow")
        if against is not None:
            against = against.map_batches(explode, batch_format="pyarrow")
        duplicates, self._comparisons = _groups.link_buckets(exploded, ["band", "bucket"], near_pairs, against=against)
        self._duplicates = _groups.DuplicateLookup(duplicates)

    def summary(self) -> dict:
        return {
            "hashes": list(self.config.hashes),
            "max_distance": self.config.max_distance,
            **super().summary(),
        }


def image_hash(data: bytes, kind: str) -> int | None:
    """A 64-bit perceptual hash of encoded image bytes as an int; None if undecodable."""
    hashes = image_hashes(data, (kind,))
    return None if hashes is None else hashes[0]


def hash_bands(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """``(n, max_distance + 1)`` band values of 64-bit hashes: two hashes within
    ``max_distance`` bits agree exactly on at least one band (pigeonhole)."""
    hashes = np.asarray(hashes).astype(np.uint64)
    layout = _band_layout(max_distance)
    return np.stack([(hashes >> np.uint64(s)) & np.uint64((1 << w) - 1) for s, w in layout], axis=1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise (broadcast) Hamming distance of uint64 hashes."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def image_hashes(data: bytes, kinds) -> tuple[int, ...] | None:
    """64-bit hashes of each kind (``phash``, ``dhash``) from one decode; None if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return tuple(_to_int(_HASHERS[kind](image)) for kind in kinds)
    except Exception:  # undecodable bytes: no hash, never grouped
        return None


_HASHERS = {"phash": imagehash.phash, "dhash": imagehash.dhash}


def _to_int(h: imagehash.ImageHash) -> int:
    return int.from_bytes(np.packbits(h.hash.reshape(-1)).tobytes(), "big")


def _band_layout(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of max_distance + 1 bands covering the 64 bits (pigeonhole)."""
    count = max_distance + 1
    widths = [HASH_BITS // count + (1 if i < HASH_BITS % count else 0) for i in range(count)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), int(w)) for s, w in zip(shifts, widths)]
