"""A synthetic run output in the exact format of ``curate run`` (tests and benchmarks).

``write_synthetic_run(out, rows)`` writes ``shards/``, ``rejects/``, ``manifest.json``
and ``stats/`` the way the runner does (see DESIGN.md, "Output of a run"), with a chain
of stages shaped like a DataComp/MetaCLIP recipe: download failures, the basic filter,
language ID, CLIP score, CAT, exact and near-duplicate removal, MetaCLIP balancing.
Each row's fate is drawn from a seeded generator, so the manifest counts are exact by
construction and a test can check the audit's numbers against them.

Optional stage columns can be switched off (``features``) to exercise "not present"
paths; ``images=True`` writes real JPEG bytes (crops of scikit-image's sample photos)
for kept rows so thumbnails have something to show. A million rows without images
take a few seconds.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ALL_FEATURES = frozenset({"lang", "clip_score", "cat", "dedup", "metaclip", "embeddings"})
DEFAULT_FEATURES = ALL_FEATURES - {"embeddings"}

_NOUNS = (
    "cat dog bird horse car bicycle boat plane train bus house tree flower mountain river "
    "beach city street bridge tower church castle garden forest lake sky cloud sunset snow "
    "chair table sofa lamp bed window door kitchen bottle cup plate pizza cake bread apple "
    "banana orange coffee tea wine guitar piano camera phone laptop book shoe dress shirt "
    "hat bag watch ring necklace painting poster logo map flag ball player team stadium "
    "child woman man family couple wedding baby portrait face hand eye smile dance concert "
    "robot rocket planet moon star galaxy microscope cell leaf insect butterfly fish shark"
).split()
_ADJECTIVES = (
    "red blue green black white old new small large vintage modern wooden golden happy "
    "beautiful dark bright wild little famous ancient"
).split()
_FILLER = "a the of in on with and at by for near over under from".split()
_LANGS = np.array(["en", "de", "fr", "es", "it", "ja", "zh", "ru", "pt", "nl"])
_LANG_P = np.array([0.80, 0.04, 0.04, 0.03, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01])


@dataclass
class SyntheticRun:
    """What was written, for tests: the manifest and the ground-truth fate of each uid."""

    out: Path
    manifest: dict
    kept_uids: list[str] = field(repr=False)
    reasons: dict[str, int] = field(repr=False)


def metaclip_entry_names(count: int) -> list[str]:
    """``count`` distinct entry strings: nouns, then "adjective noun" pairs."""
    names = list(_NOUNS)
    for adjective in _ADJECTIVES:
        for noun in _NOUNS:
            names.append(f"{adjective} {noun}")
    if count > len(names):
        names += [f"entry {i}" for i in range(len(names), count)]
    return names[:count]


def write_synthetic_run(
    out: str | Path,
    rows: int,
    *,
    seed: int = 0,
    images: bool = False,
    features: frozenset[str] | set[str] = DEFAULT_FEATURES,
    shard_rows: int = 250_000,
    entries: int = 2_000,
) -> SyntheticRun:
    """Write a run output with ``rows`` input rows under ``out`` and return its facts."""
    unknown = set(features) - ALL_FEATURES
    if unknown:
        raise ValueError(f"unknown synthetic features: {sorted(unknown)}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    n = rows
    uids = _hex_uids(rng, n)
    caption_words = np.clip(rng.poisson(9, n), 1, 60)
    caption_words[rng.random(n) < 0.04] = 1
    captions = _captions(rng, caption_words)
    urls = [f"https://img.example.com/{u[:2]}/{u}.jpg" for u in uids]
    width = np.clip(rng.lognormal(6.2, 0.45, n), 32, 4096).astype(np.int32)
    aspect = np.exp(rng.normal(0.1, 0.3, n))
    height = np.clip(width / aspect, 32, 4096).astype(np.int32)
    if images:  # keep real encodes small
        scale = np.minimum(1.0, 400 / np.maximum(width, height))
        width = np.maximum(16, (width * scale)).astype(np.int32)
        height = np.maximum(16, (height * scale)).astype(np.int32)

    reject = np.full(n, None, dtype=object)
    alive = np.ones(n, dtype=bool)
    stages: list[dict] = []
    stage_stats: dict[str, pa.Table] = {}
    columns: dict[str, pa.Array] = {}

    def apply(label: str, kind: str, masks: dict[str, np.ndarray], *, detail=None, summary=None):
        entering = int(alive.sum())
        counts = {}
        for why, mask in masks.items():
            mask = mask & alive
            key = f"{label}:{why}"
            if detail is not None:
                reject[mask] = [f"{key}={d}" for d in detail[mask]]
            else:
                reject[mask] = key
            alive[mask] = False
            if mask.any():
                counts[key] = int(mask.sum())
        stages.append({
            "name": label, "type": kind, "in": entering, "kept": int(alive.sum()),
            "rejected": entering - int(alive.sum()), "reasons": counts, "summary": summary or {},
        })

    # download: failed fetches have no image size
    fate = rng.random(n)
    not_found, timeout = fate < 0.02, (fate >= 0.02) & (fate < 0.03)
    decode = (fate >= 0.03) & (fate < 0.035)
    apply("download", "download", {"http_404": not_found, "timeout": timeout, "decode_error": decode})
    width = np.where(alive, width, 0)
    height = np.where(alive, height, 0)
    width_arr = pa.array(width, pa.int32(), mask=~alive)
    height_arr = pa.array(height, pa.int32(), mask=~alive)

    small = np.minimum(width, height) < (100 if images else 200)
    apply("basic", "basic_filter", {"caption_too_short": caption_words < 2, "image_too_small": small})

    if "lang" in features:
        lang = _LANGS[rng.choice(len(_LANGS), n, p=_LANG_P)]
        computed = alive.copy()
        columns["lang"] = pa.array(lang, pa.string(), mask=~computed)
        apply("language", "language_filter", {"lang_not_allowed": lang != "en"}, detail=lang)

    if "clip_score" in features:
        score = rng.normal(0.29, 0.055, n).astype(np.float32)
        columns["clip_score"] = pa.array(score, pa.float32(), mask=~alive)
        apply("clip_score", "clip_score", {"below_min_score": score < 0.22},
              summary={"min_score": 0.22})
        if "embeddings" in features:
            emb = rng.standard_normal((n, 8)).astype(np.float16)
            emb_arr = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 8)
            columns["clip_image_emb"] = emb_arr
            columns["clip_text_emb"] = emb_arr

    if "cat" in features:
        complexity = rng.poisson(2.2, n).astype(np.int32)
        computed = alive.copy()
        columns["cat_complexity"] = pa.array(complexity, pa.int32(), mask=~computed)
        columns["cat_has_action"] = pa.array(rng.random(n) < 0.6, pa.bool_(), mask=~computed)
        apply("cat_filter", "cat_filter", {"low_complexity": complexity < 1}, summary={"min_complexity": 1})

    if "dedup" in features:
        for label, rate, zipf in (("dedup_exact", 0.03, 2.0), ("dedup_minhash", 0.04, 1.6)):
            alive_idx = np.flatnonzero(alive)
            candidates = rng.random(alive_idx.size) < rate
            dups = alive_idx[candidates]
            keepers = alive_idx[~candidates]
            # a few representatives gather many duplicates (Zipf group sizes)
            pool = keepers[: max(1, dups.size // 2)]
            pick = np.minimum(rng.zipf(zipf, dups.size) - 1, pool.size - 1)
            detail = np.empty(n, dtype=object)
            detail[dups] = np.asarray(uids, dtype=object)[pool[pick]] if pool.size else ""
            mask = np.zeros(n, dtype=bool)
            mask[dups] = True
            apply(label, label, {"duplicate_of": mask}, detail=detail,
                  summary={"groups": int(np.unique(pick).size)})

    if "metaclip" in features:
        entry_table, entry_col, t = _metaclip(rng, n, alive, entries, apply)
        columns["metaclip_entries"] = entry_col
        stage_stats["metaclip.entry_counts"] = entry_table
        stages[-1]["summary"] = {"t": t, "entries": entries}

    table = pa.table({
        "uid": pa.array(uids, pa.string()),
        "url": pa.array(urls, pa.string()),
        "caption": pa.array(captions, pa.string()),
        "image": _images(rng, alive, width, height) if images else pa.nulls(n, pa.binary()),
        "width": width_arr,
        "height": height_arr,
        "reject": pa.array(reject, pa.string()),
        **columns,
    })
    kept = pa.array(alive)
    kept_table = table.filter(kept)
    reject_table = table.filter(pa.array(~alive)).drop_columns(["image"])

    for folder in ("shards", "rejects", "stats", "report"):
        shutil.rmtree(out / folder, ignore_errors=True)
    (out / "shards").mkdir(parents=True)
    (out / "rejects").mkdir(parents=True)
    shard_entries = _write_parts(out, "shards", kept_table, shard_rows)
    reject_entries = _write_parts(out, "rejects", reject_table, shard_rows)
    stats_paths = {}
    if stage_stats:
        (out / "stats").mkdir()
        for key, stats_table in stage_stats.items():
            rel = f"stats/{key}.parquet"
            pq.write_table(stats_table, out / rel)
            stats_paths[key] = rel

    reasons: dict[str, int] = {}
    for stage in stages:
        reasons.update(stage["reasons"])
    manifest = {
        "recipe": {"name": "synthetic", "stages": [{"type": s["type"], "name": s["name"]} for s in stages]},
        "input": {"paths": [f"synthetic://seed={seed}"], "rows": n},
        "seed": seed,
        "versions": {"pyarrow": pa.__version__, "numpy": np.__version__},
        "stages": stages,
        "totals": {"input": n, "kept": int(alive.sum()), "rejected": int((~alive).sum())},
        "shards": shard_entries,
        "rejects": reject_entries,
        "stats": stats_paths,
        "wall_s": 0.0,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return SyntheticRun(out=out, manifest=manifest,
                        kept_uids=kept_table.column("uid").to_pylist(), reasons=reasons)



# ---------------------------------------------------------------- helpers


def _hex_uids(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8).tobytes()
    hexed = binascii.hexlify(raw)
    offsets = pa.array(np.arange(0, 32 * n + 1, 32, dtype=np.int32))
    strings = pa.StringArray.from_buffers(n, offsets.buffers()[1], pa.py_buffer(hexed))
    return strings.to_pylist()


def _captions(rng: np.random.Generator, words: np.ndarray) -> list[str]:
    vocab = np.array(_NOUNS + _ADJECTIVES + _FILLER * 3, dtype=object)
    draws = vocab[rng.integers(0, vocab.size, int(words.sum()))]
    ends = np.cumsum(words)
    starts = ends - words
    return [" ".join(draws[s:e]) for s, e in zip(starts.tolist(), ends.tolist())]


def _metaclip(rng, n, alive, entries, apply):
    """Entry matches with a Zipf head, then balancing at t (MetaCLIP, Xu et al. 2023, Alg. 1)."""
    per_row = rng.poisson(2.0, n).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_row, out=offsets[1:])
    flat = (np.minimum(rng.zipf(1.25, int(offsets[-1])), entries) - 1).astype(np.int32)
    row_of = np.repeat(np.arange(n), per_row)
    entering = alive[row_of]
    count_before = np.bincount(flat[entering], minlength=entries)
    t = int(max(2, np.quantile(count_before[count_before > 0], 0.99)))
    entry_p = np.minimum(1.0, t / np.maximum(count_before, 1))
    row_p = np.zeros(n)
    np.maximum.at(row_p, row_of, entry_p[flat])
    no_entry = per_row == 0
    balanced_out = rng.random(n) >= row_p
    apply("metaclip", "metaclip", {"no_entry": no_entry, "balanced_out": balanced_out & ~no_entry})
    count_after = np.bincount(flat[alive[row_of]], minlength=entries)
    table = pa.table({
        "entry_id": pa.array(np.arange(entries, dtype=np.int32)),
        "entry": pa.array(metaclip_entry_names(entries), pa.string()),
        "count_before": pa.array(count_before.astype(np.int64)),
        "count_after": pa.array(count_after.astype(np.int64)),
    })
    column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, pa.int32()))
    return table, column, t


def _images(rng, alive, width, height) -> pa.Array:
    """JPEG bytes for kept rows: crops of scikit-image sample photos at the row's size."""
    from PIL import Image
    from skimage import data

    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"):
        photo = Image.fromarray(getattr(data, name)())
        photo.thumbnail((400, 400))
        photos.append(photo)
    out = [None] * len(alive)
    for i in np.flatnonzero(alive).tolist():
        photo = photos[i % len(photos)]
        w, h = int(width[i]), int(height[i])
        # the largest crop of the photo with the row's aspect ratio, at a random position
        scale = min(photo.width / w, photo.height / h)
        cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
        x = int(rng.integers(0, photo.width - cw + 1))
        y = int(rng.integers(0, photo.height - ch + 1))
        buffer = io.BytesIO()
        photo.resize((w, h), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch)).save(buffer, format="JPEG", quality=80)
        out[i] = buffer.getvalue()
    return pa.array(out, pa.binary())


def _write_parts(out: Path, folder: str, table: pa.Table, shard_rows: int) -> list[dict]:
    entries = []
    for part, start in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
        if table.num_rows == 0:
            break
        rel = f"{folder}/part-{part:05d}.parquet"
        pq.write_table(table.slice(start, shard_rows), out / rel, row_group_size=50_000)
        payload = (out / rel).read_bytes()
        entries.append({"path": rel, "rows": min(shard_rows, table.num_rows - start),
                        "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()})
    return entries
