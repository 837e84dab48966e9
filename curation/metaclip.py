"""MetaCLIP balancing: match captions to metadata entries, cap every entry at t.

"Demystifying CLIP Data" (Xu et al., 2023; MetaCLIP), Sec. 3 and Algorithm 1: each
caption is matched against ~500k metadata entries (substring match, see
``curation.metadata``), entries are counted over the whole pool, and a pair is kept
with probability 1 - prod_e (1 - min(1, t / count_e)) over its matched entries, so
head entries are capped at about t (20k for 400M pairs) and tail entries keep all
their pairs. Captions with no match are dropped, as in MetaCLIP.

The keep rule follows the reference ``metaclip/balancing.py`` (``balance_sampling``):
one draw per matched entry, keep if any draw < min(1, t / count_e), which has exactly
the probability above. Draws are ``hash(uid, entry_id, seed)`` (blake2b of the uid and
seed, mixed with the entry id), not a stateful RNG, so the kept set does not depend
on partitioning or cluster size. ``t`` may instead be derived from a target tail
fraction with MetaCLIP 2's ``p_to_t`` (the inverse of ``t_to_p``: the share of
matches held by entries with count < t). Optionally, as in MetaCLIP 2, each language
(a ``lang`` column) has its own entry list and its own t at the same tail fraction.

Incremental (issue 16, ``curate run --against RELEASE``): the balance continues from the
earlier releases' entry counts, so the union of the releases and the new rows is
balanced at t. Entry e already holds ``released_e`` kept pairs (the ``count_after`` of
each release's ``<label>.entry_counts`` table, matched by entry text; a release without
one has its kept captions matched here), so it has ``max(0, t - released_e)`` left, and
a new pair is drawn with ``min(1, left_e / count_e)`` over the new pool's count: a tail
entry keeps every new pair until it reaches t, a head entry the release filled keeps
none. With ``tail_fraction``, t comes from the union's pool counts. The manifest's
summary names the releases it continued from (``continued_from``) and the stats table
gains ``count_release``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from clipcurate.curation.metadata import cached_matcher, load_entries
from clipcurate.pipelines.release import NO_CONTEXT, Release
from clipcurate.pipelines.stage import GlobalStage, Resources, StageConfig, ensure_columns, kept_mask, reject_rows, set_column

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

ENTRIES = "metaclip_entries"
DEFAULT_LANG = "other"  # MetaCLIP 2's name for rows whose language has no list of its own


class MetaClipConfig(StageConfig):
    """``metadata``: entry list (JSON list or one entry per line). ``t``: the per-entry
    cap (MetaCLIP: 20k for 400M pairs). ``tail_fraction``: derive t instead, so that
    entries with count < t hold this share of all matches (MetaCLIP 2 ``p_to_t``);
    give one of the two. ``seed``: salt of the keep draws.

    Per-language (MetaCLIP 2): ``lang_metadata`` maps language codes (values of the
    ``lang_column``) to their own entry lists; other rows use ``metadata``. ``t`` then
    holds for language ``t_lang`` (or ``metadata`` if ``t_lang`` has no list) and each
    other list gets the t with the same tail fraction (``t_to_p`` then ``p_to_t``);
    with ``tail_fraction`` every list gets ``p_to_t`` of it directly.
    """

    metadata: str
    t: int | None = Field(default=20_000, ge=1)
    tail_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    seed: int = 0
    lang_metadata: dict[str, str] = Field(default_factory=dict)
    lang_column: str = "lang"
    t_lang: str = "en"

    @model_validator(mode="after")
    def _one_threshold(self):
        if self.tail_fraction is not None and "t" in self.model_fields_set and self.t is not None:
            raise ValueError("give either t or tail_fraction, not both")
        if self.tail_fraction is None and self.t is None:
            raise ValueError("give t or tail_fraction")
        if DEFAULT_LANG in self.lang_metadata:
            raise ValueError(f"lang_metadata: '{DEFAULT_LANG}' is the name of the default list (metadata)")
        return self


@dataclass(frozen=True)
class _Layout:
    """Where each entry list sits in one global id space: list 0 is ``metadata``,
    then ``lang_metadata`` by sorted language code. Entry ids in ``metaclip_entries``
    are local to the row's list; counts and probabilities use global ids."""

    langs: tuple[str, ...]  # languages with their own list, in list order 1..
    column: str
    offsets: tuple[int, ...]  # first global id of each list, plus the total

    def list_index(self, batch: pa.Table) -> np.ndarray:
        """Which entry list each row uses (0: the default list)."""
        if not self.langs:
            return np.zeros(batch.num_rows, dtype=np.int64)
        if self.column not in batch.column_names:
            raise ValueError(f"lang_metadata is set but the batch has no '{self.column}' column "
                             "(run a language stage first or set lang_column)")
        index = pc.index_in(batch.column(self.column), value_set=pa.array(self.langs, pa.string()))
        return pc.fill_null(pc.add(index, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)

    def global_lists(self, batch: pa.Table) -> pa.ListArray:
        lists = batch.column(ENTRIES)
        lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
        if not self.langs:
            return lists
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
        shift = np.repeat(np.asarray(self.offsets[:-1], dtype=np.int64)[self.list_index(batch)], lengths)
        values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64) + shift
        offsets = pc.subtract(lists.offsets, lists.offsets[0])
        return pa.ListArray.from_arrays(offsets, pa.array(values, pa.int64()), mask=lists.is_null())


class MetaClipBalance(GlobalStage):
    """MetaCLIP curation as a global stage: ``prepare`` matches (adds
    ``metaclip_entries``, rejects ``no_match``), ``fit`` counts entries over the
    dataset in one distributed pass and fixes t, ``__call__`` balances (rejects
    ``balanced_out``)."""

    name = "metaclip"
    Config = MetaClipConfig
    reads = ("uid", "caption")
    adds = {ENTRIES: pa.list_(pa.int32())}
    context = NO_CONTEXT  # set by the runner: the releases to continue from

    def __init__(self, config: MetaClipConfig | None = None, **params):
        super().__init__(config, **params)
        langs = tuple(sorted(self.config.lang_metadata))
        self._paths = (self.config.metadata, *(self.config.lang_metadata[lang] for lang in langs))
        self._langs = langs
        self._layout: _Layout | None = None
        self._probs: np.ndarray | None = None
        self._t: tuple[int, ...] | None = None
        self._count_before: np.ndarray | None = None
        self._count_after: np.ndarray | None = None
        self._released: np.ndarray | None = None
        self._continued: list[dict] = []

    def resources(self) -> Resources:
        return Resources(batch_size=1024)

    # ---------------------------------------------------------------- matching

    def prepare(self, batch: pa.Table) -> pa.Table:
        """Match every kept caption against its list; automata are built on first use
        per process (``cached_matcher``), never shipped with the stage."""
        kept = kept_mask(batch)
        if kept.any():
            entries = self._match(batch, kept)
            batch = set_column(batch, ENTRIES, entries)
            no_match = kept & (pc.fill_null(pc.list_value_length(entries), 0).to_numpy(zero_copy_only=False) == 0)
            batch = reject_rows(batch, no_match, self.reason("no_match"))
        return ensure_columns(batch, self.adds)

    def _match(self, batch: pa.Table, kept: np.ndarray) -> pa.Array:
        captions = batch.column("caption")
        lists = _Layout(self._langs, self.config.lang_column, ()).list_index(batch)
        if kept.all() and not lists.any():
            return cached_matcher(self._paths[0]).match(captions)
        pieces, order = [], []
        for index in np.unique(lists[kept]).tolist():
            rows = np.flatnonzero(kept & (lists == index))
            pieces.append(cached_matcher(self._paths[index]).match(captions.take(pa.array(rows))))
            order.append(rows)
        skipped = np.flatnonzero(~kept)
        pieces.append(pa.nulls(len(skipped), pa.list_(pa.int32())))
        order.append(skipped)
        return pa.concat_arrays(pieces).take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    # ---------------------------------------------------------------- counting

    def fit(self, ds: "ray.data.Dataset") -> None:
        """Global entry counts from per-block partial counts (only entry ids and counts
        travel to the driver, never captions), then t per list, the keep
        probabilities, and the counts after balancing (a second pass over the lists)."""
        sizes = [len(load_entries(path)) for path in self._paths]
        layout = _Layout(self._langs, self.config.lang_column, tuple(np.cumsum([0, *sizes]).tolist()))
        columns = ["uid", ENTRIES] + ([self.config.lang_column] if self._langs else [])
        lists = ds.select_columns(columns)
        seed = self.config.seed
        count_before, matched = _sum_partials(lists.map_batches(
            _partial_counts, fn_kwargs={"layout": layout, "probs": None, "seed": seed},
            batch_format="pyarrow", batch_size=None), layout.offsets[-1])
        split = lambda counts: [counts[a:b] for a, b in zip(layout.offsets[:-1], layout.offsets[1:])]  # noqa: E731
        per_list = split(count_before)
        if self.context.releases:
            released, release_pool = self._release_counts(layout)
            self._t = self._thresholds(split(count_before + release_pool))
            self._probs = np.concatenate([budget_probs(c, r, t) for c, r, t in
                                          zip(per_list, split(released), self._t)])
            self._released = released
        else:
            self._t = self._thresholds(per_list)
            self._probs = np.concatenate([entry_probs(c, t) for c, t in zip(per_list, self._t)])
        count_after, kept = _sum_partials(lists.map_batches(
            _partial_counts, fn_kwargs={"layout": layout, "probs": self._probs, "seed": seed},
            batch_format="pyarrow", batch_size=None), layout.offsets[-1])
        self._layout = layout
        self._count_before, self._count_after = count_before, count_after
        self._matched, self._kept = matched, kept

    def _release_counts(self, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
        """Per global entry id, summed over the releases: pairs they kept, and their pool's
        matches (for a t derived from a tail fraction)."""
        kept = np.zeros(layout.offsets[-1], dtype=np.int64)
        pool = np.zeros(layout.offsets[-1], dtype=np.int64)
        self._continued = []
        for release in self.context.releases:
            table = _release_entry_counts(release)
            if table is not None:
                source = "stats"
                release_kept = self._by_entry(table, "count_after", layout)
                release_pool = self._by_entry(table, "count_before", layout)
            else:  # not balanced: count the entries its kept captions match
                source = "matched"
                release_kept = release_pool = self._match_release(release, layout)
            kept += release_kept
            pool += release_pool
            stage = next(iter(release.stage_entries(self.name)), {})
            self._continued.append({"release": release.location, "digest": release.digest, "counts": source,
                                    "t": (stage.get("summary") or {}).get("t"), "kept_matches": int(release_kept.sum())})
        return kept, pool

    def _by_entry(self, table: pa.Table, column: str, layout: _Layout) -> np.ndarray:
        """A release's per-entry counts in this stage's global ids, by (list, entry text):
        an entry the release's list lacked counts 0, one this list lacks is dropped."""
        out = np.zeros(layout.offsets[-1], dtype=np.int64)
        langs = table.column("lang").to_pylist() if "lang" in table.column_names else [DEFAULT_LANG] * table.num_rows
        counts = table.column(column).to_numpy(zero_copy_only=False)
        names = table.column("entry").to_pylist()
        for index, (lang, path) in enumerate(zip((DEFAULT_LANG, *self._langs), self._paths)):
            position = {entry: i for i, entry in enumerate(load_entries(path))}
            for row in (i for i, value in enumerate(langs) if value == lang):
                found = position.get(names[row])
                if found is not None:
                    out[layout.offsets[index] + found] += counts[row]
        return out

    def _match_release(self, release: Release, layout: _Layout) -> np.ndarray:
        """Entry counts of a release's kept captions, matched on Ray (one task per shard)."""
        import ray

        columns = ["uid", "caption"] + ([self.config.lang_column] if self._langs else [])
        count = ray.remote(_release_shard_counts)
        refs = [count.remote(self, release.location, path, columns, layout) for path in release.shard_paths()]
        totals = np.zeros(layout.offsets[-1], dtype=np.int64)
        for part in ray.get(refs):
            totals += part
        return totals

    def _thresholds(self, per_list: list[np.ndarray]) -> tuple[int, ...]:
        """t per entry list: given, or from a tail fraction (MetaCLIP 2 ``global_count``)."""
        if self.config.tail_fraction is not None:
            return tuple(p_to_t(counts, self.config.tail_fraction) for counts in per_list)
        main = self._langs.index(self.config.t_lang) + 1 if self.config.t_lang in self._langs else 0
        p = t_to_p(per_list[main], self.config.t)
        return tuple(int(self.config.t) if i == main else p_to_t(counts, p) for i, counts in enumerate(per_list))

    # ---------------------------------------------------------------- balancing

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._probs is None:
            raise RuntimeError(f"stage {self.label}: call fit(dataset) before balancing")
        if ENTRIES not in batch.column_names:
            raise ValueError(f"stage {self.label}: batch has no {ENTRIES} column; run prepare(batch) first")
        kept = kept_mask(batch)
        empty = pc.fill_null(pc.list_value_length(batch.column(ENTRIES)), 0).to_numpy(zero_copy_only=False) == 0
        batch = reject_rows(batch, kept & empty, self.reason("no_match"))
        todo = kept & ~empty
        keep = np.zeros(batch.num_rows, dtype=bool)
        if todo.any():
            needed = ["uid", ENTRIES] + ([self.config.lang_column] if self._langs else [])
            rows = batch.select(needed).filter(pa.array(todo))
            keep[todo] = keep_mask(rows.column("uid"), self._layout.global_lists(rows), self._probs, self.config.seed)
        return reject_rows(batch, todo & ~keep, self.reason("balanced_out"))

    # ---------------------------------------------------------------- reporting

    def stats(self) -> dict[str, pa.Table]:
        """``entry_counts``: (entry_id, entry, count_before, count_after) per entry, plus
        ``lang`` (the list's language) when per-language lists are used."""
        if self._count_before is None:
            return {}
        entries = [load_entries(path) for path in self._paths]
        columns = {
            "entry_id": pa.array(np.concatenate([np.arange(len(e), dtype=np.int32) for e in entries])),
            "entry": pa.array([entry for e in entries for entry in e], pa.string()),
            "count_before": pa.array(self._count_before, pa.int64()),
            "count_after": pa.array(self._count_after, pa.int64()),
        }
        if self._released is not None:  # kept by the releases continued from; the union is count_after + this
            columns["count_release"] = pa.array(self._released, pa.int64())
        if self._langs:
            columns["lang"] = pa.array([lang for lang, e in zip((DEFAULT_LANG, *self._langs), entries)
                                        for _ in e], pa.string())
        return {"entry_counts": pa.table(columns)}

    def summary(self) -> dict:
        if self._count_before is None:
            return {}
        offsets = self._layout.offsets
        main = self._langs.index(self.config.t_lang) + 1 if self.config.t_lang in self._langs else 0
        before = self._count_before[offsets[main]:offsets[main + 1]]
        facts = {
            "t": int(self._t[main]),
            "tail_fraction": t_to_p(before, self._t[main]),
            "entries": int(offsets[-1]),
            "entries_matched": int((self._count_before > 0).sum()),
            "matched": int(self._matched),
            "kept": int(self._kept),
            "seed": int(self.config.seed),
        }
        if self._langs:
            facts["t_by_lang"] = {lang: int(t) for lang, t in zip((DEFAULT_LANG, *self._langs), self._t)}
        if self._released is not None:
            union = self._count_after + self._released
            facts["continued_from"] = self._continued
            facts["union_max"] = int(union[offsets[main]:offsets[main + 1]].max(initial=0))
            facts["union_entries_at_t"] = int((union[offsets[main]:offsets[main + 1]] >= self._t[main]).sum())
        return facts


# ------------------------------------------------------------------ the rule


def p_to_t(entry_counts: np.ndarray, p: float) -> int:
    """MetaCLIP 2 ``p_to_t``: the count whose cumulative share of sorted counts is
    closest to ``p`` (at least 1)."""
    counts = np.sort(np.asarray(entry_counts, dtype=np.int64))
    total = counts.sum()
    if total == 0:
        return 1
    portion = np.cumsum(counts) / total
    return max(1, int(counts[np.abs(portion - p).argmin()]))


def t_to_p(entry_counts: np.ndarray, t: int) -> float:
    """MetaCLIP 2 ``t_to_p``: share of all matches held by entries with count < t."""
    counts = np.asarray(entry_counts, dtype=np.int64)
    total = counts.sum()
    return float(counts[counts < t].sum() / total) if total else 0.0


def entry_probs(entry_counts: np.ndarray, t: int) -> np.ndarray:
    """MetaCLIP 2 ``count_to_prob``: min(1, t / count) per entry (1 for unseen entries)."""
    counts = np.maximum(np.asarray(entry_counts, dtype=np.float64), t)
    return t / counts


def budget_probs(entry_counts: np.ndarray, released: np.ndarray, t: int) -> np.ndarray:
    """Keep probability of a new pair per entry when ``released`` pairs of it are already
    published: min(1, max(0, t - released) / count), 1 for entries the new pool lacks."""
    counts = np.asarray(entry_counts, dtype=np.float64)
    left = np.maximum(0.0, t - np.asarray(released, dtype=np.float64))
    return np.where(counts > 0, np.minimum(1.0, left / np.maximum(counts, 1.0)), 1.0)


def keep_mask(uids: pa.Array | pa.ChunkedArray, lists: pa.Array | pa.ChunkedArray,
              probs: np.ndarray, seed: int) -> np.ndarray:
    """Per row: any matched entry e with draw(uid, e, seed) < probs[e] (rows with no
    or null entries: False)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks() if lists.num_chunks else pa.array([], lists.type)
    n = len(lists)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    if values.size == 0:
        return np.zeros(n, dtype=bool)
    rows = np.repeat(np.arange(n), lengths)
    draws = entry_draws(uids, rows, values, seed)
    hit = draws < probs[values]
    return np.bincount(rows[hit], minlength=n) > 0


def entry_draws(uids, rows: np.ndarray, entry_ids: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) draws from (uid, entry_id, seed): a 64-bit blake2b key per uid
    and seed, mixed with the entry id by splitmix64's finalizer."""
    uids = uids.to_pylist() if isinstance(uids, (pa.Array, pa.ChunkedArray)) else list(uids)
    needed = np.unique(rows)
    keys = np.zeros(len(uids), dtype=np.uint64)
    keys[needed] = [
        int.from_bytes(hashlib.blake2b(f"{uids[i]}|metaclip|{seed}".encode(), digest_size=8).digest(), "big")
        for i in needed.tolist()
    ]
    x = keys[rows] ^ ((entry_ids.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


# ------------------------------------------------------------------ distributed counts


def _partial_counts(batch: pa.Table, layout: _Layout, probs: np.ndarray | None, seed: int) -> pa.Table:
    """One block's entry counts in global ids (of all its rows, or with ``probs``, of
    the rows the balancing keeps), sparse (entry_id, count); entry_id -1 carries the
    number of rows counted."""
    lists = layout.global_lists(batch)
    if probs is not None:
        lists = lists.filter(pa.array(keep_mask(batch.column("uid"), lists, probs, seed)))
    rows = int(pc.sum(pc.greater(pc.fill_null(pc.list_value_length(lists), 0), 0)).as_py() or 0)
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    ids, counts = np.unique(values, return_counts=True)
    return pa.table({
        "entry_id": pa.array(np.append(ids.astype(np.int64), -1)),
        "count": pa.array(np.append(counts.astype(np.int64), rows)),
    })


def _sum_partials(partials: "ray.data.Dataset", n_entries: int) -> tuple[np.ndarray, int]:
    totals = np.zeros(n_entries + 1, dtype=np.int64)  # last slot: rows (entry_id -1)
    for part in partials.iter_batches(batch_format="pyarrow", batch_size=None):
        np.add.at(totals, part.column("entry_id").to_numpy(), part.column("count").to_numpy())
    return totals[:-1], int(totals[-1])


def _release_entry_counts(release: Release) -> pa.Table | None:
    """The ``entry_counts`` stats table of a release's MetaCLIP stage (None: it ran none)."""
    keys = [k for k in release.manifest.get("stats", {}) if k.endswith(".entry_counts")]
    if not keys:
        return None
    store = release.store
    return store.read_parquet(release.stats_path(keys[0]))


def _release_shard_counts(stage: "MetaClipBalance", location: str, path: str, columns: list[str],
                          layout: _Layout) -> np.ndarray:
    from clipcurate.pipelines.storage import Storage

    rows = Storage.at(location).read_parquet(path, columns=[c for c in columns])
    rows = rows.append_column("reject", pa.nulls(rows.num_rows, pa.string()))
    matched = stage.prepare(rows)
    counts = np.zeros(layout.offsets[-1], dtype=np.int64)
    values = pc.list_flatten(layout.global_lists(matched.filter(pc.is_null(matched.column("reject"))))).to_numpy(
        zero_copy_only=False)
    np.add.at(counts, values.astype(np.int64), 1)
    return counts
