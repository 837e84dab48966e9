"""Near-duplicate captions: MinHash + LSH banding (Broder 1997; Leskovec et al., Mining
of Massive Datasets ch. 3), verified on exact Jaccard.

Templated alt-texts ("Nike Air Max 90 - size 10", "... size 11") and re-posted
captions with a word changed are near-identical text pairs. Signatures are computed
in the streaming phase with datasketch; band keys are grouped across the cluster
(Ray Data groupby), every candidate pair is verified on the exact Jaccard of its
shingle sets, and groups are built with union-find (datatrove's and NeMo Curator's
MinHash dedup follow the same passes).

Banding comes from datasketch's optimal (b, r) for a candidate threshold set below
the Jaccard threshold: with the default b=16, r=8 a pair at Jaccard 0.8 becomes a
candidate with probability 0.95 (0.99 at 0.85), and exact verification removes the
false positives the lower candidate threshold lets in. Defaults suit short alt-texts:
word unigrams of the lower-cased caption, so one changed word in a caption of nine or
more words stays at Jaccard >= 0.8 (character 5-grams put the same edit near 0.72).
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH
from pydantic import Field, model_validator

from dedup import _groups
from pipelines.stage import StageConfig, ensure_columns, kept_mask, set_column

_SPACES = re.compile(r"\s+")
_WORDS = re.compile(r"\w+")


class MinHashDedupConfig(StageConfig):
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    """Jaccard similarity of shingle sets at or above which captions are duplicates."""
    num_perm: int = Field(128, ge=8, le=1024)
    ngram: Literal["char", "word"] = "word"
    ngram_size: int = Field(1, ge=1, le=64)
    seed: int = 1
    verify: Literal["jaccard", "none"] = "jaccard"
    """``jaccard``: keep only candidate pairs whose exact shingle Jaccard >= threshold;
    ``none``: every pair sharing a band is a duplicate (LSH alone)."""
    candidate_threshold: float | None = Field(None, gt=0.0, le=1.0)
    """LSH design threshold; default threshold - 0.15 with verification, else threshold."""

    @model_validator(mode="after")
    def _candidate_not_above_threshold(self):
        if self.candidate_threshold is not None and self.candidate_threshold > self.threshold:
            raise ValueError("candidate_threshold must not exceed threshold")
        return self


class MinHashDedup(_groups.DedupStage):
    """One survivor per group of near-duplicate captions; the others get
    ``dedup_minhash:duplicate_of=<uid>`` (keep rule: highest clip_score, then uid)."""

    name = "dedup_minhash"
    Config = MinHashDedupConfig
    reads = ("uid", "caption")
    adds = {"minhash_bands": pa.list_(pa.uint64())}

    def __init__(self, config: MinHashDedupConfig | None = None, **params):
        super().__init__(config, **params)
        cfg = self.config
        candidate = cfg.candidate_threshold
        if candidate is None:
            candidate = max(0.3, cfg.threshold - 0.15) if cfg.verify == "jaccard" else cfg.threshold
        lsh = MinHashLSH(threshold=candidate, num_perm=cfg.num_perm)
        self.bands, self.rows = lsh.b, lsh.r

    def prepare(self, batch: pa.Table) -> pa.Table:
        kept = kept_mask(batch)
        captions = batch.column("caption").to_pylist()
        shingled = [self.shingles(c) if k and c is not None else set() for c, k in zip(captions, kept)]
        has = np.array([len(s) > 0 for s in shingled], dtype=bool)
        keys = np.zeros((len(shingled), self.bands), dtype=np.uint64)
        if has.any():
            todo = [[s.encode() for s in shingled[i]] for i in np.flatnonzero(has)]
            generator = MinHash.generator(todo, num_perm=self.config.num_perm, seed=self.config.seed)
            signatures = np.stack([m.hashvalues for m in generator])
            keys[has] = _band_keys(signatures, self.bands, self.rows)
        flat = pa.array(keys.reshape(-1))
        offsets = pa.array(np.arange(0, keys.size + 1, self.bands, dtype=np.int32))
        bands = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~has))
        batch = set_column(batch, "minhash_bands", bands)
        return ensure_columns(batch, self.adds)

    def fit(self, ds) -> None:
        verify = self.config.verify == "jaccard"
        width, threshold = self.bands, self.config.threshold
        ngram, size = self.config.ngram, self.config.ngram_size
        columns = ["minhash_bands", *_groups.rank_columns(ds.columns())] + (["caption"] if verify else [])
        ds = ds.select_columns(columns)

        def explode(table: pa.Table) -> pa.Table:
            """One row per (sample, band). With verification, each sample's shingles go
            along as sorted 64-bit hashes (shingled once here, not once per band)."""
            table = table.filter(table.column("minhash_bands").is_valid())
            bands = table.column("minhash_bands").combine_chunks()
            rest = table.drop_columns(["minhash_bands"])
            if verify:
                rest = rest.drop_columns(["caption"])
                hashed = [_shingle_hashes(shingles(c, ngram, size)) for c in table.column("caption").to_pylist()]
                rest = rest.append_column("text_key", pa.array([_set_key(h) for h in hashed], pa.uint64()))
                offsets = np.concatenate([[0], np.cumsum([len(h) for h in hashed])]).astype(np.int64)
                values = np.concatenate(hashed) if hashed else np.empty(0, np.uint64)
                rest = rest.append_column("shingles", pa.LargeListArray.from_arrays(offsets, values))
            out = rest.take(pa.array(np.repeat(np.arange(table.num_rows), width)))
            out = out.append_column("band", pa.array(np.tile(np.arange(width, dtype=np.int32), table.num_rows)))
            return out.append_column("bucket", bands.flatten())

        def near_pairs(shard: pa.Table, starts: np.ndarray, sizes: np.ndarray):
            rows, run = _groups.run_rows(starts, sizes)
            if not verify:  # LSH alone: every bucket member links to the bucket's first row
                rest = rows != starts[run]
                return rows[rest], starts[run][rest]
            keys = shard.column("text_key").to_numpy()[rows]
            _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            value_ids = np.full(shard.num_rows, -1, dtype=np.int64)
            value_ids[rows] = inverse.reshape(-1)
            matrix = _hash_matrix(shard.column("shingles").take(pa.array(rows[first])).combine_chunks())

            def similar(a, b):
                return _jaccard_at_least(matrix, a, b, threshold)

            return _groups.value_pairs(value_ids, starts, sizes, similar)

        exploded = ds.map_batches(explode, batch_format="pyarrow")
        links = _groups.link_buckets(exploded, ["band", "bucket"], near_pairs)
        self._duplicates = _groups.DuplicateLookup(_groups.resolve(links))

    def shingles(self, caption: str) -> set[str]:
        """The shingle set of a caption (n-grams of the normalised text)."""
        return shingles(caption, self.config.ngram, self.config.ngram_size)

    def summary(self) -> dict:
        return {"bands": self.bands, "rows": self.rows, **super().summary()}


def shingles(caption: str, ngram: str, size: int) -> set[str]:
    """n-gram shingles of the lower-cased caption: word n-grams (words are runs of
    letters/digits) or character n-grams of the whitespace-collapsed text. A text
    shorter than one n-gram is a single shingle (itself)."""
    text = _normalise(caption)
    if not text:
        return set()
    if ngram == "word":
        words = _WORDS.findall(text)
        if len(words) <= size:
            return {" ".join(words)} if words else set()
        return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}
    if len(text) <= size:
        return {text}
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _normalise(caption: str) -> str:
    return _SPACES.sub(" ", caption.lower()).strip()


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band: an FNV-1a-style fold of the band's r hash values,
    mixed with the band index (datasketch's MinHashLSH keys bands the same way, by
    bytes of the slice)."""
    n = len(signatures)
    keys = np.empty((n, bands), dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for band in range(bands):
            h = np.full(n, np.uint64(0xCBF29CE484222325) ^ np.uint64(band), dtype=np.uint64)
            for value in signatures[:, band * rows : (band + 1) * rows].T.astype(np.uint64):
                h = (h ^ value) * prime
            keys[:, band] = h
    return keys


def _shingle_hashes(shingle_set: set[str]) -> np.ndarray:
    """Sorted 64-bit hashes of a shingle set (BLAKE2b: the same in every process, unlike
    ``hash()``; a collision inside one compared pair has odds near 2**-58)."""
    return np.unique(np.fromiter((int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                                  for s in shingle_set), dtype=np.uint64, count=len(shingle_set)))


def _set_key(hashes: np.ndarray) -> int:
    """One 64-bit key per shingle set: equal sets (Jaccard 1) need no comparison."""
    return int.from_bytes(hashlib.blake2b(hashes.tobytes(), digest_size=8).digest(), "little")


def _hash_matrix(lists: pa.Array):
    """Binary CSR incidence matrix (sets x distinct hashes) of a list array of hashes."""
    from scipy.sparse import csr_matrix

    offsets = lists.offsets.to_numpy()
    values = lists.values.to_numpy()[offsets[0] : offsets[-1]]
    columns, indices = np.unique(values, return_inverse=True)
    return csr_matrix((np.ones(len(indices), np.float32), indices.reshape(-1), offsets - offsets[0]),
                      shape=(len(lists), max(1, len(columns))))


def _jaccard_at_least(matrix, a: np.ndarray, b: np.ndarray, threshold: float, chunk: int = 250_000) -> np.ndarray:
    """Exact Jaccard(row a, row b) >= threshold for each pair, vectorised in chunks of
    pairs (a shard of templated captions can hold millions of candidate pairs, and the
    gathered rows of each side take ~12 bytes per shingle)."""
    sizes = np.diff(matrix.indptr)
    common = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), chunk):
        part = slice(start, start + chunk)
        common[part] = np.asarray(matrix[a[part]].multiply(matrix[b[part]]).sum(axis=1)).ravel()
    return common >= threshold * (sizes[a] + sizes[b] - common) - 1e-9
