"""Near-duplicate image-text pairs by their captions: MinHash + LSH banding (Broder
1997; Leskovec et al., Mining of Massive Datasets ch. 3), verified on exact Jaccard and,
for pairs, on the image's perceptual hash.

Re-posted pairs (the same picture with its caption, a word changed or not) are the
duplicates of a web pool. Templated alt-texts ("buy cozy T-shirt online, free
shipping") are not: the same caption on a different picture is a different sample, and
judging captions alone removed ~27 % of the clean pairs of a web-like pool (issue 14).
So by default (``match: pair``) a pair is a duplicate of another only when its caption
is near-duplicate (Jaccard >= threshold) *and* its image is near-identical (pHash within
``image_max_distance``, dedup_perceptual's measured radius) to that same other pair.
Every link is verified on both before union-find, so a group only holds pairs joined
through such double links; a row whose image does not decode is never grouped.
``match: caption`` judges captions alone: right for text-only corpora, or for pools
where one pair per caption is wanted (e.g. to cap a template's share).

Signatures (and, for pairs, pHashes) are computed in the streaming phase with
datasketch and imagehash, reusing a ``phash`` column an earlier dedup_perceptual left;
band keys are grouped across the cluster (Ray Data groupby); in pair mode each
caption bucket is split again by the pigeonhole bands of the pHash (as
dedup_perceptual buckets), so a template on k different images costs k rows, not k²
comparisons; each bucket member is verified against a few of the bucket's members
(``_groups.value_pairs``), so a bucket of n templated captions that differ in one token
costs ~5n checks, not n²/2 (issue 17); groups are built with union-find (datatrove's
and NeMo Curator's MinHash dedup follow the same passes).

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
import pyarrow.compute as pc
from datasketch import MinHash, MinHashLSH
from pydantic import Field, model_validator

from clipcurate.dedup import _against, _groups
from clipcurate.dedup.perceptual import PHASH_RADIUS, hamming, hash_bands, image_hash
from clipcurate.pipelines.stage import StageConfig, ensure_columns, kept_mask, set_column

_SPACES = re.compile(r"\s+")
_WORDS = re.compile(r"\w+")


class MinHashDedupConfig(StageConfig):
    match: Literal["pair", "caption"] = Field(
        "pair",
        description="pair: a duplicate needs a near-duplicate caption and a near-identical image, both of the same "
        "other pair; caption: the caption alone decides (text-only corpora, or one pair per caption wanted)",
    )
    threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Jaccard similarity of shingle sets at or above which captions are near-duplicates"
    )
    image_max_distance: int = Field(
        PHASH_RADIUS,
        ge=0,
        le=31,
        description="match: pair: Hamming radius (inclusive) on the images' 64-bit pHash; default dedup_perceptual's "
        "measured radius",
    )
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations")
    ngram: Literal["char", "word"] = Field("word", description="shingle by words or by characters")
    ngram_size: int = Field(1, ge=1, le=64, description="words or characters per shingle")
    seed: int = Field(1, description="MinHash permutation seed")
    verify: Literal["jaccard", "none"] = Field(
        "jaccard",
        description="jaccard: keep only candidate caption pairs whose exact shingle Jaccard >= threshold; none: "
        "captions sharing a band are near-duplicates (LSH alone)",
    )
    candidate_threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="LSH design threshold; default threshold - 0.15 with verification, else threshold"
    )

    @model_validator(mode="after")
    def _candidate_not_above_threshold(self):
        if self.candidate_threshold is not None and self.candidate_threshold > self.threshold:
            raise ValueError("candidate_threshold must not exceed threshold")
        return self


class MinHashDedup(_groups.DedupStage):
    """One survivor per group of near-duplicate pairs (or captions, ``match: caption``);
    the others get ``dedup_minhash:duplicate_of=<uid>`` (keep rule: highest clip_score,
    then uid)."""

    name = "dedup_minhash"
    Config = MinHashDedupConfig
    reads = ("uid", "caption", "image")
    adds = {"minhash_bands": pa.list_(pa.uint64()), "phash": pa.uint64()}

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
        if self.config.match == "pair":
            batch = set_column(batch, "phash", _phashes(batch, has))
            has &= batch.column("phash").is_valid().to_numpy(zero_copy_only=False)
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
        pair = self.config.match == "pair"
        width, threshold, radius = self.bands, self.config.threshold, self.config.image_max_distance
        ngram, size = self.config.ngram, self.config.ngram_size
        extra = (["caption"] if verify else []) + (["phash"] if pair else [])
        ds = ds.select_columns(["minhash_bands", *_groups.rank_columns(ds.columns()), *extra])

        def explode(table: pa.Table) -> pa.Table:
            """One row per (sample, band). With verification, each sample's shingles go
            along as sorted 64-bit hashes (shingled once here, not once per band)."""
            table = table.filter(table.column("minhash_bands").is_valid())  # in pair mode: has a pHash too
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
            if pair:  # rows meet only when their captions share a bucket and their pHashes a band
                phash = shard.column("phash").to_numpy()
                rows, run = _groups.split_runs(rows, run, hash_bands(phash[rows], radius))
            elif not verify:  # LSH alone: every bucket member links to the bucket's first row
                rest = rows != starts[run]
                return rows[rest], starts[run][rest], 0
            value_columns = (["text_key"] if verify else []) + (["phash"] if pair else [])
            keys = np.stack([shard.column(c).to_numpy()[rows] for c in value_columns], 1)
            _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
            value_ids = np.full(shard.num_rows, -1, dtype=np.int64)
            value_ids[rows] = inverse.reshape(-1)
            value_rows = rows[first]  # one row per distinct value
            if pair:
                value_phash = phash[value_rows]
            if verify:
                matrix = _hash_matrix(shard.column("shingles").take(pa.array(value_rows)).combine_chunks())

            def similar(a, b):
                ok = hamming(value_phash[a], value_phash[b]) <= radius if pair else np.ones(len(a), dtype=bool)
                if verify:  # Jaccard only where the images already agree
                    ok[ok] = _jaccard_at_least(matrix, a[ok], b[ok], threshold)
                return ok

            rank = _groups.member_rank(shard, rows, value_columns)
            return _groups.value_pairs(value_ids, rows, run, rank, similar)

        ds, against = _against.with_releases(
            self, ds, ["minhash_bands", *extra], spec=self._signature_spec(), stored=self._same_signatures,
            derive=self.prepare, reads=("caption", "image", "phash"))
        exploded = ds.map_batches(explode, batch_format="pyarrow")
        if against is not None:
            against = against.map_batches(explode, batch_format="pyarrow")
        duplicates, self._comparisons = _groups.link_buckets(exploded, ["band", "bucket"], near_pairs, against=against)
        self._duplicates = _groups.DuplicateLookup(duplicates)

    def _signature_spec(self) -> dict:
        """What a row's ``minhash_bands`` (and pHash) depend on."""
        cfg = self.config
        return {"num_perm": cfg.num_perm, "seed": cfg.seed, "ngram": cfg.ngram, "ngram_size": cfg.ngram_size,
                "bands": self.bands, "rows": self.rows, "match": cfg.match}

    def _same_signatures(self, release) -> bool:
        """Whether the release's stored ``minhash_bands`` are what this stage computes: made
        by a dedup_minhash with the same permutations, shingles and banding."""
        mine = self._signature_spec()
        for entry in release.stage_entries(self.name):
            params, summary = entry.get("params", {}), entry.get("summary", {})
            theirs = {k: params.get(k) for k in ("num_perm", "seed", "ngram", "ngram_size", "match")}
            theirs |= {"bands": summary.get("bands"), "rows": summary.get("rows")}
            if theirs == mine:
                return True
        return False

    def shingles(self, caption: str) -> set[str]:
        """The shingle set of a caption (n-grams of the normalised text)."""
        return shingles(caption, self.config.ngram, self.config.ngram_size)

    def summary(self) -> dict:
        return {"match": self.config.match, "bands": self.bands, "rows": self.rows, **super().summary()}


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


def _phashes(batch: pa.Table, wanted: np.ndarray) -> pa.Array:
    """The ``phash`` column where an earlier stage (dedup_perceptual) filled it, else the
    pHash of the image for the ``wanted`` rows (null when it does not decode)."""
    n = batch.num_rows
    present = batch.column("phash").combine_chunks() if "phash" in batch.column_names else pa.nulls(n, pa.uint64())
    todo = np.flatnonzero(wanted & present.is_null().to_numpy(zero_copy_only=False))
    if len(todo) == 0:
        return present
    hashes = [image_hash(b, "phash") if b is not None else None for b in batch.column("image").take(todo).to_pylist()]
    computed = np.zeros(n, dtype=np.uint64)
    found = np.zeros(n, dtype=bool)
    found[todo] = [h is not None for h in hashes]
    computed[todo[found[todo]]] = [h for h in hashes if h is not None]
    return pc.coalesce(present, pa.array(computed, mask=~found))


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
