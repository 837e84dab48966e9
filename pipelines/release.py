"""Earlier releases and blocklists: what an incremental run curates against (issue 16).

A *release* is the finished output folder of an earlier ``curate run`` (``manifest.json``,
``shards/``, ``stats/``). ``curate run ... --against RELEASE`` gives a run one or more of
them: every dedup stage also matches the new pool against the releases' kept rows, and
MetaCLIP balancing continues from their entry counts. A release is only ever read: what
stages derive from it (hashes, signatures) is cached in ``RunContext.cache`` (by default
``OUT/_work/against/``), never beside it, because a release is a published result whose
files and sha256 sums its manifest lists, may sit on read-only storage, and may be read
by several runs at once. Cache entries are keyed by the release's identity and by what
was derived, so one cache folder may be shared by many runs (``--against-cache``).

A release's identity (``Release.digest``) is the hash of its manifest: the manifest lists
every shard with its size and sha256, its recipe and its run fingerprint, so it changes
whenever the release's content does, and reading it costs one small file (hashing the
shards themselves would cost a full read of a release at every run start). The run
fingerprint mixes the releases' digests into every stage from the first global stage on
(``with_releases``): a resumed or rerun output never mixes work made against another
release, and changing ``--against`` never costs a download.

A *blocklist* lists samples that must never come back (takedown requests, an earlier
review): uids, URLs, SHA-256 of the image (as served, or as stored) and 64-bit perceptual hashes.
``read_blocklist`` reads parquet, csv, jsonl (columns ``uid``, ``url``, ``sha256``,
``phash``, any subset, nulls allowed) or txt (one ``kind:value`` per line).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.pipelines import fingerprint as fp
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.storage import Storage

RELEASE_UID_PREFIX = "~release:"  # a release row's uid inside a dedup stage's fit (never collides with a pool uid)
BLOCK_KINDS = ("uid", "url", "sha256", "phash")


@dataclass(frozen=True)
class Release:
    """A finished run output that a new run curates against. Read-only."""

    location: str  # as the user gave it (a folder or a URI)
    digest: str  # hash of manifest.json: the release's identity
    manifest: dict = field(repr=False, compare=False, hash=False)

    @property
    def store(self) -> Storage:
        return Storage.at(self.location)

    @property
    def name(self) -> str:
        return posixpath.basename(self.store.root.rstrip("/")) or "release"

    @property
    def rows(self) -> int:
        return int(self.manifest["totals"]["kept"])

    def shard_paths(self) -> list[str]:
        """The release's kept-row shards as its manifest lists them (full paths on its filesystem)."""
        return [self.store.path(entry["path"]) for entry in self.manifest.get("shards", [])]

    def shard_columns(self) -> list[str]:
        """Column names of the release's shards (from the first shard's schema)."""
        schema = self.shard_schema()
        return schema.names if schema is not None else []

    def shard_schema(self):
        """The first shard's arrow schema (field metadata included), or None without shards."""
        paths = self.shard_paths()
        if not paths:
            return None
        import pyarrow.parquet as pq

        with self.store.fs.open_input_file(paths[0]) as handle:
            return pq.ParquetFile(handle).schema_arrow

    def stats_path(self, key: str) -> str | None:
        """Full path of a stats table the release's manifest lists (``metaclip.entry_counts``)."""
        relative = self.manifest.get("stats", {}).get(key)
        return self.store.path(relative) if relative else None

    def stage_entries(self, stage_type: str) -> list[dict]:
        """The release's manifest entries of stages of one type (``metaclip``, ``dedup_minhash``)."""
        return [s for s in self.manifest.get("stages", []) if s.get("type") == stage_type]

    def describe(self) -> dict:
        """What the new run's manifest records about this release."""
        return {"release": self.location, "digest": self.digest, "rows": self.rows,
                "fingerprint": (self.manifest.get("fingerprint") or {}).get("input"),
                "created": self.manifest.get("created")}


def open_release(location: str) -> Release:
    """Read a release's manifest; a folder without one (an unfinished run) is refused."""
    store = Storage.at(location)
    path = store.path("manifest.json")
    if not store.exists(path):
        raise UserError(f"--against {location}: no manifest.json (give the output folder of a finished 'curate run')")
    try:
        manifest = store.read_json(path)
    except UserError as err:
        raise UserError(f"--against {location}: {err}") from None
    if "preview" in manifest:
        raise UserError(f"--against {location}: a --sample preview is not a release")
    for entry in manifest.get("shards", []):
        shard = store.path(entry["path"])
        if not store.exists(shard) or store.size(shard) != entry["bytes"]:
            raise UserError(f"--against {location}: {entry['path']} is missing or changed since the release was written")
    return Release(location=str(location), digest=hashlib.blake2b(json.dumps(manifest, sort_keys=True).encode(), digest_size=10).hexdigest(),
                   manifest=manifest)


@dataclass(frozen=True)
class RunContext:
    """What a run hands its stages besides their parameters: the earlier releases it
    curates against and where to cache what stages derive from them. The runner sets it
    on every stage (``stage.context``) before the run; it pickles with the stage."""

    releases: tuple[Release, ...] = ()
    cache: str | None = None  # folder (local or URI) for derived release features

    @property
    def digest(self) -> str | None:
        return fp.digest([r.digest for r in self.releases]) if self.releases else None

    def cache_store(self) -> Storage:
        if self.cache is None:
            raise RuntimeError("RunContext.cache is not set (the runner sets it to OUT/_work/against)")
        return Storage.at(self.cache)


NO_CONTEXT = RunContext()


def open_context(against: list[str] | tuple[str, ...], cache: str | None) -> RunContext:
    """Open every release once, in the order given (a release named twice counts once)."""
    releases, seen = [], set()
    for location in against:
        release = open_release(location)
        if release.digest not in seen:
            seen.add(release.digest)
            releases.append(release)
    return RunContext(releases=tuple(releases), cache=cache)


def bind(stages: list, context: RunContext) -> None:
    """Give every stage the run's context (stages that match against releases read it)."""
    for stage in stages:
        stage.context = context


def with_releases(chain: list[dict], stages: list, context: RunContext) -> list[dict]:
    """The run's fingerprint chain with the releases mixed in from the first global stage
    on: the per-sample stages before it (the download above all) never read a release, so
    their work stays reusable when ``--against`` changes; every stage from there on is
    another stage against another release."""
    if not context.releases:
        return chain
    first = next((i for i, s in enumerate(stages) if s.is_global), len(stages))
    out, salt = [], context.digest
    for i, entry in enumerate(chain):
        key = entry["fingerprint"] if i < first else fp.digest([entry["fingerprint"], "against", salt])
        out.append({"stage": entry["stage"], "fingerprint": key})
    return out


# ------------------------------------------------------------------ blocklists


@dataclass(frozen=True)
class Blocklist:
    """Blocked items by kind: sorted uids, normalised URLs and sha256 hex digests, and
    64-bit perceptual hashes (uint64)."""

    uid: np.ndarray
    url: np.ndarray
    sha256: np.ndarray
    phash: np.ndarray

    def __len__(self) -> int:
        return len(self.uid) + len(self.url) + len(self.sha256) + len(self.phash)


def read_blocklist(paths: list[str] | tuple[str, ...]) -> Blocklist:
    """All items of the blocklist files ``paths`` (module docstring for the formats)."""
    found: dict[str, list] = {kind: [] for kind in BLOCK_KINDS}
    for path in paths:
        for kind, values in _read_one(str(path)).items():
            found[kind].extend(values)
    return Blocklist(
        uid=np.unique(np.array(found["uid"], dtype=object).astype(str)) if found["uid"] else np.array([], str),
        url=np.unique(np.array([normalise_url(u) for u in found["url"]], dtype=object).astype(str))
        if found["url"] else np.array([], str),
        sha256=np.unique(np.array([s.lower() for s in found["sha256"]], dtype=object).astype(str))
        if found["sha256"] else np.array([], str),
        phash=np.unique(np.array([parse_hash(h) for h in found["phash"]], dtype=np.uint64)),
    )


def normalise_url(url: str) -> str:
    """The form URLs are compared in: scheme and host lower-cased, default port and
    fragment dropped (``HTTP://Example.com:80/a.jpg#x`` is ``http://example.com/a.jpg``).
    Path and query stay as they are: servers treat them case-sensitively."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return url
    if not parts.scheme or not host:
        return url
    scheme = parts.scheme.lower()
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def parse_hash(value) -> int:
    """A 64-bit perceptual hash given as an int, or as 16 hex digits (imagehash's ``str``)."""
    if isinstance(value, (int, np.integer)):
        return int(value) & 0xFFFFFFFFFFFFFFFF
    text = str(value).strip().lower()
    text = text[2:] if text.startswith("0x") else text
    if len(text) != 16:
        raise UserError(f"blocklist: perceptual hash {value!r} is not 16 hex digits (64 bits)")
    return int(text, 16)


def _read_one(path: str) -> dict[str, list]:
    store = Storage.at(path)
    if not store.exists(store.root):
        raise UserError(f"blocklist {path}: file not found")
    suffix = posixpath.splitext(store.root)[1].lower()
    if suffix in (".txt", ".list", ""):
        return _read_lines(store.read_bytes(store.root).decode("utf-8"), path)
    if suffix == ".parquet":
        table = store.read_parquet(store.root)
    elif suffix in (".csv", ".tsv"):
        import pyarrow.csv as pacsv

        options = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        convert = pacsv.ConvertOptions(column_types={k: pa.string() for k in ("uid", "url", "sha256", "phash")})
        with store.fs.open_input_stream(store.root) as handle:
            table = pacsv.read_csv(handle, parse_options=options, convert_options=convert)
    elif suffix in (".jsonl", ".json"):
        import pyarrow.json as pajson

        with store.fs.open_input_stream(store.root) as handle:
            table = pajson.read_json(handle)
    else:
        raise UserError(f"blocklist {path}: unknown format {suffix!r} (parquet, csv, tsv, jsonl or txt)")
    kinds = [k for k in BLOCK_KINDS if k in table.column_names]
    if not kinds:
        raise UserError(f"blocklist {path}: no column among {', '.join(BLOCK_KINDS)}")
    out = {}
    for kind in kinds:
        column = table.column(kind)
        column = column.filter(pc.is_valid(column))
        out[kind] = column.to_pylist() if kind == "phash" and pa.types.is_integer(column.type) else \
            [str(v) for v in column.to_pylist() if str(v).strip()]
    return out


def _read_lines(text: str, path: str) -> dict[str, list]:
    """txt: ``kind:value`` per line (``url:https://...``, ``sha256:...``, ``phash:...``,
    ``uid:...``); blank lines and ``#`` comments are skipped."""
    out: dict[str, list] = {kind: [] for kind in BLOCK_KINDS}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, value = line.partition(":")
        if kind not in out or not value.strip():
            raise UserError(f"blocklist {path}:{number}: expected 'kind:value' with kind one of "
                            f"{', '.join(BLOCK_KINDS)}, got {line[:60]!r}")
        out[kind].append(value.strip())
    return out
