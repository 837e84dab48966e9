"""Search a run by text or by image: a faiss index over its kept rows' CLIP image embeddings.

What clip-retrieval is for, on a curated run: "what is in here about X", "what looks like
this picture", and, in the audit, "what are the nearest neighbours of these samples and
of the largest duplicate groups" (near-duplicates that survived dedup show up there).

``build_index(RUN)`` reads ``uid`` + ``clip_image_emb`` from ``RUN/shards/`` (the
``clip_score`` stage writes the column with ``embeddings: true``; its field metadata
names the model, ``train.embedding_columns.MODEL_KEY``), or embeds the images itself with
``model`` when the shards carry no embeddings. The index kind depends on the row count:

- up to ``EXACT_MAX`` rows: ``IndexFlatIP``, exact (cosine: the embeddings are
  L2-normalised), a query costs one pass over n x dim floats;
- up to ``HNSW_MAX``: ``IndexHNSWFlat`` (M=32, efConstruction=40, efSearch=128), graph
  search. On ``bench/search.py``'s 200k CLIP-like 512-d embeddings (2 shared cores),
  recall@10 against exact / build CPU seconds: M 32 efC 80 0.9933 / 54-55 s; **M 32 efC
  40 0.9824 / 37-44 s**; M 16 efC 80 0.9713 / 42 s; M 24 efC 60 0.9684 / 37-45 s; M 16
  efC 40 0.8717 / 21 s (fails 0.95). efC 40 builds a fifth to a third faster and keeps 3
  points of margin over 0.95; M 16 costs more recall for no faster build;
- beyond: ``IVF{nlist},PQ{dim/8}x8,Refine(SQfp16)`` (nlist ~ 4 sqrt(n), nprobe 64; the
  refine step reranks 16 x k candidates with fp16 vectors): a fraction of the memory of the two above.

``RUN/index/`` holds ``image.faiss``, ``rows.parquet`` (index id -> uid and where the
row sits: shard file, row group, row) and ``index.json`` (kind, parameters, rows, the
model fingerprint, the shards it was built from, build time). A query is embedded with
the model that made the embeddings; another model (``--model``), or the same checkpoint
path holding other weights now, is refused: its vectors live in another space.
"""

from __future__ import annotations

import base64
import html
import io
import json
import posixpath
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.limits import load_faiss_index
from clipcurate.pipelines.storage import Storage
from clipcurate.train.embedding_columns import MODEL_KEY, column_model, embedding_matrix, same_model

EMBEDDING = "clip_image_emb"
INDEX_DIR = "index"
EXACT_MAX = 100_000
HNSW_MAX = 10_000_000
KINDS = ("auto", "flat", "hnsw", "ivfpq")
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 128  # measured: see the module doc
IVF_NPROBE, REFINE_K_FACTOR = 64, 16
THUMB_PX = 160


@dataclass
class SearchIndex:
    """An opened index: faiss, the rows it covers, what built it."""

    store: Storage  # the run
    info: dict
    index: object  # faiss.Index
    rows: pa.Table  # uid, file, group, row; one per index id

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` nearest rows of each query, best first; id -1 past the end."""
        k = max(1, min(k, self.index.ntotal))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def fetch(self, ids, columns: list[str]) -> list[dict]:
        """The shard rows of index ids (in that order), reading only their row groups."""
        ids = [int(i) for i in ids if i >= 0]
        picked = self.rows.take(pa.array(ids, pa.int64())).to_pylist() if ids else []
        shards = self.store.child("shards")
        by_file: dict[str, list[tuple[int, dict]]] = {}
        for i, where in zip(ids, picked):
            by_file.setdefault(where["file"], []).append((i, where))
        out: dict[int, dict] = {}
        for file, items in by_file.items():
            table = shards.read_group_rows(shards.path(file), [(w["group"], w["row"]) for _, w in items], columns)
            for (i, _), row in zip(items, table.to_pylist()):
                out[i] = row
        return [out[i] for i in ids]


def build_index(run: str | Storage, *, kind: str = "auto", model: str | None = None, pretrained: str | None = None,
                force: bool = False, batch_size: int = 256, log=print) -> dict:
    """Build (or keep, when current) ``RUN/index/``; returns ``index.json``'s content."""
    import faiss

    if kind not in KINDS:
        raise UserError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    store = run if isinstance(run, Storage) else Storage.at(run)
    shards = _shards(store)
    described = [[posixpath.basename(p), store.size(p)] for p in shards]
    folder = store.child(INDEX_DIR)
    if folder.exists(folder.path("index.json")) and not force:
        info = folder.read_json(folder.path("index.json"))
        if info.get("shards") == described and kind in ("auto", info["kind"]):
            log(f"index: up to date ({info['rows']:,} rows, {info['kind']}); --force rebuilds it")
            return info
    started = time.perf_counter()
    vectors, rows, fingerprint, source = _embeddings(store, shards, model, pretrained, batch_size, log)
    if not len(vectors):
        raise UserError(f"{store.uri()}: no kept rows with embeddings to index")
    n, dim = vectors.shape
    chosen = kind if kind != "auto" else ("flat" if n <= EXACT_MAX else "hnsw" if n <= HNSW_MAX else "ivfpq")
    index, params = make_index(chosen, vectors)
    build_s = time.perf_counter() - started
    info = {"kind": chosen, "params": params, "rows": n, "dim": dim, "metric": "inner_product (cosine)",
            "model": fingerprint, "embeddings": source, "shards": described,
            "faiss": faiss.__version__, "build_s": round(build_s, 3), "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
    folder.makedirs(folder.root)
    folder.write_bytes(faiss.serialize_index(index).tobytes(), folder.path("image.faiss"))
    folder.write_parquet(rows, folder.path("rows.parquet"))
    folder.write_bytes(json.dumps(info, indent=2).encode(), folder.path("index.json"))  # last: marks it complete
    log(f"index: {n:,} rows x {dim} ({chosen}) in {build_s:.1f} s -> {folder.uri()}")
    return info


def make_index(kind: str, vectors: np.ndarray):
    """A filled faiss index of ``kind`` over normalised ``vectors``, and its parameters."""
    import faiss

    n, dim = vectors.shape
    if kind == "flat":
        index, params = faiss.IndexFlatIP(dim), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    elif kind == "ivfpq":
        nlist = int(max(1, min(n // 39, 4 * np.sqrt(n))))  # faiss wants >= 39 training points per list
        m = next(m for m in (dim // 8, dim // 4, dim // 2, dim, 1) if m and dim % m == 0)
        factory = f"IVF{nlist},PQ{m}x8,Refine(SQfp16)"
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        # polysemous codes serve Hamming pre-filtering, which the refine step makes moot; training them is slow
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        sample = vectors[np.random.default_rng(0).permutation(n)[:min(n, 256 * nlist)]]
        index.train(sample)
        faiss.extract_index_ivf(index).nprobe = IVF_NPROBE
        index.k_factor = REFINE_K_FACTOR
        params = {"factory": factory, "nprobe": IVF_NPROBE, "k_factor": REFINE_K_FACTOR}
    else:
        raise UserError(f"unknown index kind {kind!r}")
    index.add(vectors)
    return index, params


def open_index(run: str | Storage) -> SearchIndex:
    store = run if isinstance(run, Storage) else Storage.at(run)
    folder = store.child(INDEX_DIR)
    if not folder.exists(folder.path("index.json")):
        raise UserError(f"{store.uri()}: no index; build it with: curate index {store.uri()}")
    info = folder.read_json(folder.path("index.json"))
    described = [[posixpath.basename(p), store.size(p)] for p in _shards(store)]
    if described != info["shards"]:
        raise UserError(f"{store.uri()}: the shards changed since the index was built; rebuild it: "
                        f"curate index {store.uri()} --force")
    made_by = {_shard_model(store, path) for path in _shards(store)} - {None}
    if made_by and not all(same_model(m, info.get("model")) for m in made_by):
        raise UserError(f"{store.uri()}: index.json names the model {info.get('model')}, the shards' {EMBEDDING} "
                        f"was made by {', '.join(sorted(made_by))}; rebuild it: curate index {store.uri()} --force")
    index = load_faiss_index(folder.read_bytes(folder.path("image.faiss")), folder.uri(folder.path("image.faiss")))
    rows = folder.read_parquet(folder.path("rows.parquet"))
    if index.ntotal != rows.num_rows or index.ntotal != info.get("rows"):
        raise UserError(f"{folder.uri()}: image.faiss holds {index.ntotal:,} vectors, rows.parquet {rows.num_rows:,} "
                        f"rows, index.json says {info.get('rows')}; rebuild it: curate index {store.uri()} --force")
    _set_search_params(index, info)
    return SearchIndex(store, info, index, rows)


def query_encoder(info: dict, model: str | None = None, pretrained: str | None = None, device: str = "auto"):
    """The encoder for queries: the model that made the index's embeddings. ``model``
    names it explicitly (e.g. when the run recorded a relative path); a model whose
    fingerprint differs from the index's is refused."""
    from clipcurate.train.clip_model import Encoder

    spec, recorded_pretrained = _parse_fingerprint(info["model"])
    if model is None and spec is None:
        raise UserError("the index does not record which model made its embeddings; pass --model")
    chosen = model if model is not None else spec
    chosen_pretrained = pretrained if model is not None else recorded_pretrained
    try:  # the fingerprint digests the model's files without loading them: a mismatch loads nothing
        fingerprint = _fingerprint_of(chosen, chosen_pretrained)
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"cannot read the index's model {chosen!r} ({err}); pass --model") from None
    if not same_model(fingerprint, info["model"]):
        raise UserError(f"model mismatch: the index's embeddings were made by {info['model']}, the query model "
                        f"is {fingerprint}; queries must be embedded by the model that made the index "
                        f"(a retrained checkpoint at the same path is another model: re-embed and rebuild)")
    try:
        return Encoder(chosen, chosen_pretrained, device=device)
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"cannot load the index's model {chosen!r} ({err}); pass --model") from None


def search_run(run: str | Storage, *, text: str | None = None, image: bytes | None = None, k: int = 20,
               model: str | None = None, pretrained: str | None = None, device: str = "auto") -> dict:
    """The ``k`` kept rows nearest to a text or an image query, best first."""
    if (text is None) == (image is None):
        raise UserError("give one query: --text or --image")
    opened = open_index(run)
    encoder = query_encoder(opened.info, model, pretrained, device)
    if text is not None:
        query = encoder.texts([text])
    else:
        encoded = encoder.images([image])
        if not encoded.decoded[0]:
            raise UserError("the query image does not decode")
        query = encoded.image
    scores, ids = opened.search(query, k)
    rows = opened.fetch(ids[0], ["uid", "caption", "url", "image", "width", "height", "clip_score"])
    results = [{"rank": r + 1, "score": round(float(s), 6), **row}
               for r, (s, row) in enumerate(zip(scores[0][ids[0] >= 0], rows))]
    return {"query": {"text": text} if text is not None else {"image": True}, "index": opened.info,
            "results": results, "query_image": image}


def write_search_page(found: dict, path: str | Path) -> Path:
    """A self-contained HTML page: the query and a grid of the results (thumbnails inline)."""
    query = found["query"]
    if "text" in query:
        head = f"<p>Text query: <q>{html.escape(query['text'])}</q></p>"
    else:
        head = f'<p>Image query:</p><img class="query" src="{_thumb_uri(found["query_image"])}" alt="query">'
    cards = "".join(_card(r, f"#{r['rank']} · {r['score']:.3f}") for r in found["results"])
    info = found["index"]
    body = (f"{head}<div class=\"grid\">{cards}</div><p class=\"note\">{info['rows']:,} rows, {info['kind']} "
            f"index, model <code>{html.escape(info['model'])}</code></p>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page("Search", body), encoding="utf-8")
    return path


def audit_neighbours(run: str | Path, *, samples: int = 4, groups: int = 3, k: int = 6) -> str:
    """HTML for the audit: the nearest kept neighbours of a few random kept samples (the
    smallest uids: uniform and the same on every audit) and of the kept originals of the
    largest duplicate groups. Uses ``RUN/index/`` when present and current, else an exact
    search over the embeddings when the run is small; otherwise says how to get it."""
    store = Storage.at(str(run))
    try:
        opened = open_index(store)
    except UserError:
        opened = _in_memory_index(store)
        if opened is None:
            return ('<p class="absent">not present: needs an image-embedding index (<code>curate index RUN</code>; '
                    'embeddings come from <code>clip_score</code> with <code>embeddings: true</code>)</p>')
    import pyarrow.compute as pc

    uids = opened.rows.column("uid")
    order = pc.sort_indices(uids).to_numpy()[:samples]
    parts = [f"<p class=\"note\">{opened.info['rows']:,} kept rows, {opened.info['kind']} index; the first card "
             f"of each row is the sample, then its {k} nearest kept neighbours by image embedding (cosine).</p>"]
    parts.append(f"<h4>Random samples ({len(order)}, smallest uids)</h4>")
    parts += [_neighbour_row(opened, int(i), k, "sample") for i in order]
    largest = _largest_duplicate_groups(store, groups)
    if largest:
        position = {u: i for i, u in enumerate(uids.to_pylist())}
        parts.append(f"<h4>Largest duplicate groups ({len(largest)})</h4>")
        for original, removed in largest:
            if original in position:
                parts.append(_neighbour_row(opened, position[original], k, f"kept original, {removed:,} removed"))
    return "".join(parts)


# ------------------------------------------------------------------ helpers

def _shards(store: Storage) -> list[str]:
    if not store.exists(store.root):
        raise UserError(f"{store.uri()}: no such run")
    files = store.list_files(store.path("shards"), ".parquet")
    if not files:
        raise UserError(f"{store.uri()}: no shards (give the output folder of curate run)")
    return files


def _shard_model(store: Storage, path: str) -> str | None:
    """The model fingerprint a shard's embedding column records (its footer only)."""
    with store.fs.open_input_file(path) as handle:
        return column_model(pq.ParquetFile(handle).schema_arrow, EMBEDDING)


def _embeddings(store: Storage, shards: list[str], model, pretrained, batch_size, log):
    """(vectors float32 [n, dim], rows table, model fingerprint, "column" | "computed")."""
    schemas = []
    for path in shards:
        with store.fs.open_input_file(path) as handle:
            schemas.append(pq.ParquetFile(handle).schema_arrow)
    has_column = all(EMBEDDING in s.names for s in schemas)
    if has_column:
        fingerprints = {(s.field(EMBEDDING).metadata or {}).get(MODEL_KEY, b"").decode() for s in schemas}
        if len(fingerprints) > 1:
            raise UserError(f"{store.uri()}: the shards hold embeddings of {len(fingerprints)} models; "
                            f"an index needs one space")
        fingerprint = fingerprints.pop()
        if model is not None:
            encoder_fp = _fingerprint_of(model, pretrained)
            if fingerprint and not same_model(encoder_fp, fingerprint):
                raise UserError(f"model mismatch: the shards' {EMBEDDING} was made by {fingerprint}, not {encoder_fp}")
            fingerprint = fingerprint or encoder_fp
        if not fingerprint:
            raise UserError(f"{store.uri()}: {EMBEDDING} does not record its model; pass --model (the clip_score model)")
        columns, encoder = ["uid", EMBEDDING], None
    elif model is None:
        raise UserError(f"{store.uri()}: the shards have no {EMBEDDING} column (clip_score with embeddings: true "
                        f"writes it); pass --model to embed the images now")
    else:
        from clipcurate.train.clip_model import Encoder

        encoder = Encoder(model, pretrained)
        fingerprint, columns = encoder.fingerprint, ["uid", "image"]
        log(f"index: embedding images with {model} ...")
    vectors, rows = [], {"uid": [], "file": [], "group": [], "row": []}
    for path in shards:
        with store.fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=columns)
                if encoder is None:
                    values, keep = _as_matrix(table.column(EMBEDDING))
                else:
                    encoded = encoder.images(table.column("image").to_pylist(), batch_size)
                    values, keep = encoded.image, encoded.decoded
                index = np.flatnonzero(keep)
                vectors.append(values)
                rows["uid"] += table.column("uid").take(pa.array(index)).to_pylist()
                rows["file"] += [posixpath.basename(path)] * len(index)
                rows["group"] += [group] * len(index)
                rows["row"] += index.tolist()
    matrix = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
    if len(matrix):
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix /= np.maximum(norms, 1e-12)  # float16 storage leaves norms a little off 1
    table = pa.table({"uid": pa.array(rows["uid"], pa.string()), "file": pa.array(rows["file"], pa.string()),
                      "group": pa.array(rows["group"], pa.int32()), "row": pa.array(rows["row"], pa.int32())})
    return matrix, table, fingerprint, "column" if encoder is None else "computed"


def _as_matrix(column) -> tuple[np.ndarray, np.ndarray]:
    """A (fixed-size) list column -> the non-null rows as a float32 matrix, and the mask."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    keep = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return embedding_matrix(column.filter(pa.array(keep))), keep


def _fingerprint_of(model, pretrained) -> str:
    from clipcurate.train.clip_model import model_fingerprint

    return model_fingerprint(model, pretrained)


def _parse_fingerprint(fingerprint: str) -> tuple[str | None, str | None]:
    """``model|pretrained|digest`` (``train.clip_model.model_fingerprint``) -> (model, pretrained)."""
    parts = fingerprint.rsplit("|", 2)
    if len(parts) != 3:
        return None, None
    return parts[0], None if parts[1] in ("None", "") else parts[1]


def _set_search_params(index, info: dict) -> None:
    import faiss

    if info["kind"] == "hnsw":
        index.hnsw.efSearch = info["params"].get("efSearch", HNSW_EF_SEARCH)
    elif info["kind"] == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = info["params"].get("nprobe", IVF_NPROBE)


def _in_memory_index(store: Storage) -> SearchIndex | None:
    """An exact index over a small run's stored embeddings, for the audit (not saved)."""
    try:
        shards = _shards(store)
        total = sum(store.parquet_rows(p) for p in shards)
        if total > EXACT_MAX:
            return None
        vectors, rows, fingerprint, _ = _embeddings(store, shards, None, None, 256, lambda *_: None)
    except UserError:
        return None
    if not len(vectors):
        return None
    index, params = make_index("flat", vectors)
    info = {"kind": "flat (in memory)", "params": params, "rows": len(vectors), "model": fingerprint}
    return SearchIndex(store, info, index, rows)


def _largest_duplicate_groups(store: Storage, count: int) -> list[tuple[str, int]]:
    """(kept original uid, rows removed as its duplicates), largest first."""
    import pyarrow.compute as pc

    files = store.list_files(store.path("rejects"), ".parquet")
    if not files or not count:
        return []
    reasons = pa.chunked_array([store.read_parquet(p, columns=["reject"]).column("reject") for p in files])
    detail = pc.extract_regex(reasons, r"^dedup_[a-z_]+:duplicate_of=(?P<uid>[0-9a-f]+)")
    originals = pc.struct_field(detail, "uid").drop_null() if detail.null_count < len(detail) else pa.array([], pa.string())
    if not len(originals):
        return []
    counts = pc.value_counts(originals)
    pairs = sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()),
                   key=lambda p: (-p[1], p[0]))
    return pairs[:count]


def _neighbour_row(opened: SearchIndex, position: int, k: int, label: str) -> str:
    vector = opened.index.reconstruct(position).reshape(1, -1)
    scores, ids = opened.search(vector, k + 1)
    keep = [(s, i) for s, i in zip(scores[0], ids[0]) if i >= 0 and i != position][:k]
    rows = opened.fetch([position] + [i for _, i in keep], ["uid", "caption", "image"])
    cards = [_card(rows[0], label)] + [_card(row, f"{s:.3f}") for (s, _), row in zip(keep, rows[1:])]
    return f'<div class="grid neighbours">{"".join(cards)}</div>'


def _card(row: dict, label: str) -> str:
    caption = html.escape((row.get("caption") or "")[:160])
    image = f'<img src="{_thumb_uri(row.get("image"))}" alt="{caption[:80]}">' if row.get("image") else \
        '<div class="captioncard">no image</div>'
    url = row.get("url")
    link = f' <a href="{html.escape(url)}">url</a>' if url else ""
    return (f'<div class="card kept">{image}<div class="reason">{html.escape(label)}</div>'
            f'<p class="caption">{caption}</p><div class="meta"><code title="{html.escape(row["uid"])}">'
            f'{html.escape(row["uid"][:10])}</code>{link}</div></div>')


def _thumb_uri(data: bytes | None) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB_PX, THUMB_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
    except Exception:  # noqa: BLE001 - a broken image becomes an empty thumbnail, not a failed page
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _page(title: str, body: str) -> str:
    css = ("body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}.grid{display:flex;flex-wrap:wrap;gap:10px}"
           ".card{width:170px;border:1px solid #ddd;border-radius:6px;padding:5px;background:#fff}"
           ".card img{width:160px;height:160px;object-fit:contain;background:#f4f4f4}"
           ".reason{font-weight:600}.caption{margin:.3em 0;font-size:12px}.meta{font-size:11px;color:#666}"
           "img.query{max-width:240px}.note{color:#555}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{css}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n')


def page_name(text: str | None, image_path: str | None) -> str:
    """A file name for a query's page: ``search-<words>.html``."""
    words = re.sub(r"[^a-z0-9]+", "-", (text or Path(image_path or "image").stem).lower()).strip("-")[:40]
    return f"search-{words or 'query'}.html"
