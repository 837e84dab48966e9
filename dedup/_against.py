"""The earlier releases' rows as a dedup stage's fit sees them (issue 16).

Each dedup stage matches the new pool against the kept rows of every ``--against``
release (``pipelines/release.py``) with the same buckets and checks it uses inside the
pool. A release row enters the fit with its uid prefixed (``RELEASE_UID_PREFIX``: a pair
re-crawled with the same URL and caption has the same uid, and must still be two
nodes) and a keep-rule score of +inf, so a group that holds a release row keeps it and
names it in every new member's reason.

What the fit needs of a release row (pixel hash, pHash/dHash, MinHash band keys,
embedding) comes from:

* the release's shards, when the stage that made the release stored it there and it is
  what this stage would compute (hashes are pure functions of the image bytes; MinHash
  band keys only under equal permutations, shingles and banding);
* else this stage's own ``prepare`` over the release's shards, run once on Ray (one task
  per shard) and cached per shard in ``RunContext.cache`` under the release's digest and
  a digest of what was derived, so a rerun, a resumed run or another run sharing the
  cache folder reads it back instead of decoding 200k images again.

Embeddings are never recomputed here (that needs the CLIP model of the clip_score
stage): ``dedup_semantic`` needs a release whose shards hold ``clip_image_emb``.

A release is someone else's output, so its uids (and those of a shared cache) are
checked against make_uid's form as each shard is read; the fit waits for every read's
verdict, so a bad uid stops the run with the user's one line rather than a Ray traceback.
"""

from __future__ import annotations

import posixpath
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.pipelines import fingerprint as fp
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.release import RELEASE_UID_PREFIX, Release
from clipcurate.pipelines.stage import REJECT, check_uids, set_column
from clipcurate.pipelines.storage import Storage

SCORE = "clip_score"


def releases_of(stage) -> tuple[Release, ...]:
    return stage.context.releases


def release_rows(stage, columns: list[str], *, spec: dict, stored: Callable[[Release], bool],
                 derive: Callable[[pa.Table], pa.Table] | None, reads: tuple[str, ...] = ("image", "caption")):
    """A Ray Dataset of every release's kept rows: ``uid`` (prefixed), ``columns`` and
    ``clip_score`` = +inf; None when the run has no release.

    ``stored(release)``: whether the release's shards hold ``columns`` as this stage would
    compute them. Otherwise ``derive(table)`` (the stage's ``prepare``) computes them from
    the shard columns ``reads`` (those present), once per shard, into the cache."""
    import ray

    releases = releases_of(stage)
    if not releases:
        return None
    refs, checks = [], []
    for index, release in enumerate(releases):
        present = set(release.shard_columns())
        if stored(release) and set(columns) <= present:
            cache_dir, wanted = None, ["uid", *columns]
        elif derive is None:
            missing = ", ".join(sorted(set(columns) - present))
            raise UserError(f"{stage.label}: release {release.location} has no {missing} column in its shards "
                            f"(make it with a recipe that stores it), so it cannot be matched against")
        else:
            key = fp.digest({"stage": stage.name, "spec": spec, "columns": columns})
            cache_dir = stage.context.cache_store().path(f"{release.name}-{release.digest}", f"{stage.name}-{key}")
            wanted = ["uid", *[c for c in dict.fromkeys(reads) if c in present and c != "uid"]]
        read = ray.remote(num_cpus=1, num_returns=2)(_release_part)
        for number, shard in enumerate(release.shard_paths()):
            cached = posixpath.join(cache_dir, f"part-{number:05d}.parquet") if cache_dir else None
            rows, refused = read.remote(release.location, index, shard, wanted, columns, cached,
                                        derive if cache_dir else None, stage.context.cache)
            refs.append(rows)
            checks.append(refused)
    for message in ray.get(checks):  # the verdicts only (None or why)
        if message is not None:
            raise UserError(message)
    import ray.data

    return ray.data.from_arrow_refs(refs) if refs else None  # the rows stay in the object store


def as_release_rows(table: pa.Table, columns: list[str], index: int) -> pa.Table:
    """Feature rows of release ``index`` as a fit sees them: uid ``<prefix><index>:<uid>``
    (``_groups.release_uid`` reads it back), the columns, score +inf."""
    uid = pc.binary_join_element_wise(pa.scalar(f"{RELEASE_UID_PREFIX}{index}:"), table.column("uid"), "")
    out = pa.table({"uid": uid, **{c: table.column(c) for c in columns}})
    return out.append_column(SCORE, pa.array(np.full(out.num_rows, np.inf)))


def with_score(table: pa.Table) -> pa.Table:
    """A new-pool table with ``clip_score`` as float64 (null when absent), to union with release rows."""
    score = pc.cast(table.column(SCORE), pa.float64()) if SCORE in table.column_names \
        else pa.nulls(table.num_rows, pa.float64())
    return set_column(table, SCORE, score)


def _release_part(location: str, index: int, shard: str, wanted: list[str], columns: list[str], cached: str | None,
                  derive, cache: str | None) -> tuple[pa.Table | None, str | None]:
    """One release shard's feature rows (from the cache, the shard itself, or derived and
    cached), or (None, why) when they are refused: the driver raises it as one line."""
    try:
        return _release_rows_of(location, index, shard, wanted, columns, cached, derive, cache), None
    except UserError as err:
        return None, str(err)


def _release_rows_of(location: str, index: int, shard: str, wanted: list[str], columns: list[str],
                     cached: str | None, derive, cache: str | None) -> pa.Table:
    release_store = Storage.at(location)
    if cached is None:
        return as_release_rows(_read_checked(release_store, shard, wanted), columns, index)
    cache_store = Storage.at(cache)
    if cache_store.exists(cached):
        return as_release_rows(_read_checked(cache_store, cached, None), columns, index)
    rows = _read_checked(release_store, shard, wanted)
    rows = rows.append_column(REJECT, pa.nulls(rows.num_rows, pa.string()))
    derived = derive(rows).select(["uid", *columns])
    cache_store.write_parquet(derived, cached)
    return as_release_rows(derived, columns, index)


def _read_checked(store: Storage, path: str, columns: list[str] | None) -> pa.Table:
    table = store.read_parquet(path, columns=columns)
    if "uid" not in table.column_names:
        raise UserError(f"{store.uri(path)}: no uid column (a shard of 'curate run' has one)")
    check_uids(table.column("uid"), store.uri(path))
    return table


def with_releases(stage, ds, columns: list[str], *, spec: dict, stored: Callable[[Release], bool],
                  derive: Callable[[pa.Table], pa.Table] | None, reads: tuple[str, ...] = ("image", "caption"),
                  keep: Callable[[pa.Table], pa.Table] | None = None):
    """``(ds, against)`` with the same columns ``uid, *columns, clip_score`` in the same
    order (what ``_groups.link_buckets`` unions), or ``(ds, None)`` without releases.
    ``keep(table)``: the fit's own row filter (valid hashes), applied to both sides."""
    against = release_rows(stage, columns, spec=spec, stored=stored, derive=derive, reads=reads)
    if against is None:
        return ds, None
    order = ["uid", *columns, SCORE]

    def align(table: pa.Table) -> pa.Table:
        table = with_score(table).select(order)
        return keep(table) if keep is not None else table

    return ds.map_batches(align, batch_format="pyarrow"), against.map_batches(align, batch_format="pyarrow")
