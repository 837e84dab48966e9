"""Sample rows for the report's thumbnail grids, reading image bytes for those rows only.

The sample is the rows with the smallest uids (uids are hashes, so this is a uniform,
deterministic sample that does not depend on partitioning, and two runs over the same
pool show the same pairs). Kept rows: ``count`` of them. Rejected rows: ``per_reason``
for each rejection reason. Rejected rows have no image bytes (the runner drops them),
so they are shown as caption cards; a duplicate's card shows the kept row it
duplicates when that row is in the shards. Image bytes are fetched with a polars scan
filtered on the sampled uids (prefiltered: the ``image`` column is decoded only for
matching rows, and only in the files that hold them); for a mirror of a run in object
storage (``audit.remote``), from the run in the store, by row. A thumbnail is named by
its uid, so every kept uid is checked against make_uid's form first (a shard from
someone else's run could hold ``../../x``).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from clipcurate.curation.audit.remote import read_images, source_of
from clipcurate.curation.audit.stats import Run
from clipcurate.pipelines.storage import Storage

THUMB_PX = 176


@dataclass
class Card:
    """One sample for the grid; ``thumb`` is a path relative to the report folder."""

    uid: str
    caption: str | None
    kept: bool
    reason: str | None = None
    detail: str | None = None
    clip_score: float | None = None
    width: int | None = None
    height: int | None = None
    thumb: str | None = None
    note: str | None = None
    duplicate_thumb: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def sample_cards(run: Run, report: Path, *, subdir: str = "thumbs", count: int = 24,
                 per_reason: int = 6) -> dict:
    """Pick the samples, write thumbnails under ``report/subdir``; kept and per-reason cards."""
    check_shard_uids(run)
    columns = [c for c in ("uid", "caption", "clip_score", "width", "height") if run.has(c)]
    kept_frame = (run.kept().select(*_present(columns, run.kept_schema))
                  .bottom_k(count, by="uid").sort("uid"))
    sampled = (run.rejected().select("uid", "reason").group_by("reason")
               .agg(pl.col("uid").bottom_k(per_reason)).explode("uid"))
    kept_rows, sampled = pl.collect_all([kept_frame, sampled])
    reject_rows = (run.rejected().filter(pl.col("uid").is_in(sampled["uid"].implode()))
                   .select(*_present(columns, run.reject_schema), "reason", "detail")
                   .sort("reason", "uid").collect())

    duplicate_of = [d for d, r in zip(reject_rows["detail"].to_list(), reject_rows["reason"].to_list())
                    if d and r.endswith(":duplicate_of")]
    wanted = set(kept_rows["uid"].to_list()) | set(duplicate_of)
    images = _fetch_images(run, wanted)
    folder = report / subdir
    folder.mkdir(parents=True, exist_ok=True)
    thumbs = {uid: _thumbnail(data, folder / f"{uid}.jpg") for uid, data in images.items()}

    def rel(uid: str | None) -> str | None:
        path = thumbs.get(uid)
        return f"{subdir}/{path.name}" if isinstance(path, Path) else None

    kept_cards = []
    for row in kept_rows.iter_rows(named=True):
        card = _card(row, kept=True)
        card.thumb = rel(card.uid)
        if card.thumb is None:
            card.note = thumbs.get(card.uid) if isinstance(thumbs.get(card.uid), str) else "no image bytes"
        kept_cards.append(card)
    by_reason: dict[str, list[Card]] = {}
    for row in reject_rows.iter_rows(named=True):
        card = _card(row, kept=False)
        card.duplicate_thumb = rel(card.detail) if card.reason.endswith(":duplicate_of") else None
        by_reason.setdefault(card.reason, []).append(card)
    return {"kept": kept_cards, "rejected": by_reason}


def check_shard_uids(run: Run) -> None:
    """Refuse the run when a kept uid could not name a thumbnail file (one pass over
    each shard's uid column)."""
    for path in run.shards:
        Storage.at(Path(path).parent).read_uids(str(path))


def _present(columns: list[str], schema: dict) -> list[pl.Expr]:
    return [pl.col(c) if c in schema else pl.lit(None).alias(c) for c in columns]


def _card(row: dict, *, kept: bool) -> Card:
    score = row.get("clip_score")
    return Card(uid=row["uid"], caption=row.get("caption"), kept=kept, reason=row.get("reason"),
                detail=row.get("detail"), clip_score=None if score is None else float(score),
                width=row.get("width"), height=row.get("height"))


def _fetch_images(run: Run, uids: set[str]) -> dict[str, bytes | None]:
    """``uid -> image bytes`` for the given uids among kept rows (the only image reads);
    for a mirror of a run in object storage, from the run in the store."""
    if not uids or not run.shards:
        return {}
    if source_of(run.out) is not None:
        return read_images(run.out, _rows_of(run, uids))
    if "image" not in run.kept_schema:
        return {}
    where = pl.scan_parquet(run.shards, include_file_paths="__file", schema=run.kept_schema,
                            missing_columns="insert", extra_columns="ignore")
    files = (where.select("uid", "__file").filter(pl.col("uid").is_in(list(uids)))
             .select(pl.col("__file").unique()).collect()["__file"].to_list())
    if not files:
        return {}
    frame = (pl.scan_parquet(files, parallel="prefiltered", schema=run.kept_schema,
                             missing_columns="insert", extra_columns="ignore")
             .filter(pl.col("uid").is_in(list(uids))).select("uid", "image").collect())
    return dict(zip(frame["uid"].to_list(), frame["image"].to_list()))


def _rows_of(run: Run, uids: set[str]) -> dict[str, list[int]]:
    """``{shard file name: indices of the rows holding uids}`` (for reads by row)."""
    starts, total = {}, 0
    for path in run.shards:
        starts[str(path)] = total
        total += pq.ParquetFile(path).metadata.num_rows
    found = (pl.scan_parquet(run.shards, row_index_name="__row", include_file_paths="__file",
                             schema=run.kept_schema, missing_columns="insert", extra_columns="ignore")
             .filter(pl.col("uid").is_in(list(uids))).select("__file", "__row").collect())
    rows: dict[str, list[int]] = {}
    for file, row in found.iter_rows():
        rows.setdefault(Path(file).name, []).append(row - starts[file])
    return rows


def _thumbnail(data: bytes | None, path: Path) -> Path | str:
    """Write a JPEG thumbnail; on failure return a short note instead of a path."""
    if not data:
        return "no image bytes"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB_PX, THUMB_PX))
            image.save(path, format="JPEG", quality=85)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return f"image did not decode ({type(err).__name__})"
    return path
