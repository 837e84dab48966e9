"""Blocklist: samples that must never come back, from takedown requests or an earlier review.

A new crawl re-finds what a takedown or a safety review removed from an earlier release:
the same URL, the same pair, the same stored image bytes, or the image re-encoded on
another host. Like LAION's re-release after its safety review (LAION-5B "Re-LAION", 2024:
known-bad items matched by URL and by image hash), each kind is matched where it can
be, so a blocked URL is never fetched:

* before the download: ``uid`` (url + caption) and ``url`` (compared after
  ``pipelines.release.normalise_url``: scheme and host lower-cased, default port and
  fragment dropped) -> ``blocklist:uid``, ``blocklist:url``;
* after it: ``sha256`` of the image as served (the download's ``source_sha256``: what a
  takedown request names, since the download re-encodes) or of the stored image bytes
  (what ``dedup_exact`` writes as ``image_sha256``) -> ``blocklist_image:sha256``, and the 64-bit
  pHash within ``phash_max_distance`` bits of a blocked one (re-encodes, resizes) ->
  ``blocklist_image:phash=<blocked hash, 16 hex digits>``.

``curate run --blocklist FILE`` adds both stages; a recipe may also list the stage
itself (one stage checks every kind it can see). The blocked pHashes are indexed by the
pigeonhole bands ``dedup_perceptual`` uses, so a list of millions costs a few binary
searches per row, not a scan. The default radius is the measured pHash-alone radius of
docs/dedup.md (precision >= 0.99 on every kind of image): a takedown list must not
remove look-alike products that nobody asked to remove.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from clipcurate.dedup.perceptual import PHASH_RADIUS, hamming, hash_bands, image_hash
from clipcurate.pipelines.release import BLOCK_KINDS, normalise_url, read_blocklist
from clipcurate.pipelines.stage import Stage, StageConfig, kept_mask, reject_rows

Kind = Literal["uid", "url", "sha256", "phash"]


class BlocklistConfig(StageConfig):
    paths: list[str] = Field(min_length=1, description="blocklist files (pipelines/release.py for the formats)")
    check: tuple[Kind, ...] = Field(BLOCK_KINDS, min_length=1, description="kinds this stage checks")
    phash_max_distance: int = Field(
        PHASH_RADIUS, ge=0, le=31,
        description="Hamming radius (inclusive) on the 64-bit pHash; default the measured pHash-alone radius")


class BlocklistFilter(Stage):
    """Reject kept rows whose uid, URL, stored image SHA-256 or pHash is blocked."""

    name = "blocklist"
    Config = BlocklistConfig
    reads = ("uid", "url")

    def setup(self) -> None:
        blocked = read_blocklist(self.config.paths)
        self._uid, self._url, self._sha256 = blocked.uid, blocked.url, blocked.sha256
        self._phash = blocked.phash
        radius = self.config.phash_max_distance
        bands = hash_bands(self._phash, radius) if len(self._phash) else np.zeros((0, radius + 1), np.uint64)
        order = np.argsort(bands, axis=0, kind="stable")
        self._band_order = order
        self._band_sorted = np.take_along_axis(bands, order, axis=0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        kept = kept_mask(batch)
        reasons = np.full(batch.num_rows, None, dtype=object)
        check = set(self.config.check)
        if "uid" in check and len(self._uid):
            hit = kept & np.isin(_strings(batch.column("uid")), self._uid)
            reasons[hit] = self.reason("uid")
        if "url" in check and len(self._url):
            urls = np.array([normalise_url(u) if u else "" for u in batch.column("url").to_pylist()], dtype=str)
            hit = kept & (reasons == None) & np.isin(urls, self._url)  # noqa: E711 (numpy elementwise)
            reasons[hit] = self.reason("url")
        images = batch.column("image").to_pylist() if "image" in batch.column_names else [None] * batch.num_rows
        todo = [i for i in np.flatnonzero(kept & (reasons == None)) if images[i] is not None]  # noqa: E711
        if todo and "sha256" in check and len(self._sha256):
            digests = np.array([hashlib.sha256(images[i]).hexdigest() for i in todo])
            hit = np.isin(digests, self._sha256)
            if "source_sha256" in batch.column_names:
                served = batch.column("source_sha256").take(pa.array(todo)).to_pylist()
                hit |= np.isin(np.array([h or "" for h in served]), self._sha256)
            reasons[np.asarray(todo)[hit]] = self.reason("sha256")
            todo = [i for i, h in zip(todo, hit) if not h]
        if todo and "phash" in check and len(self._phash):
            for row, blocked in zip(todo, self._near([image_hash(images[i], "phash") for i in todo])):
                if blocked is not None:
                    reasons[row] = self.reason(f"phash={blocked:016x}")
        mask = reasons != None  # noqa: E711
        return reject_rows(batch, mask, reasons) if mask.any() else batch

    def _near(self, hashes: list[int | None]) -> list[int | None]:
        """The nearest blocked pHash within the radius of each hash (None: none, or undecodable)."""
        radius = self.config.phash_max_distance
        valid = np.array([h is not None for h in hashes], dtype=bool)
        out: list[int | None] = [None] * len(hashes)
        if not valid.any():
            return out
        query = np.array([h for h in hashes if h is not None], dtype=np.uint64)
        rows = np.flatnonzero(valid)
        query_bands = hash_bands(query, radius)
        candidates: list[np.ndarray] = [np.empty(0, np.int64)] * len(query)
        for band in range(query_bands.shape[1]):
            column = self._band_sorted[:, band]
            lo = np.searchsorted(column, query_bands[:, band], side="left")
            hi = np.searchsorted(column, query_bands[:, band], side="right")
            for q in np.flatnonzero(hi > lo):
                candidates[q] = np.concatenate([candidates[q], self._band_order[lo[q]:hi[q], band]])
        for q, found in enumerate(candidates):
            if len(found):
                distance = hamming(self._phash[found], query[q])
                best = int(distance.argmin())
                if distance[best] <= radius:
                    out[rows[q]] = int(self._phash[found[best]])
        return out


def _strings(column) -> np.ndarray:
    return np.array(["" if v is None else v for v in column.to_pylist()], dtype=str)
