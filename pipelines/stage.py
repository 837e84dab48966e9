"""The Stage protocol and the sample schema: the contract every room builds on.

A sample is one row of an Arrow table. A stage adds columns and may set ``reject``
on rows that are still kept; it never drops a row (datatrove's exclusion writer,
NeMo Curator's ProcessingStage). Rows already rejected pass through untouched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from clipcurate.pipelines.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl
    import ray.data

REJECT = "reject"

# Columns every stage may rely on after the input reader (image/width/height are
# filled by the download stage; before it they are null).
SAMPLE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("image", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        (REJECT, pa.string()),
    ]
)


class StageConfig(BaseModel):
    """Typed, validated stage parameters. Unknown keys are errors (no kwargs tunnels)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the runner maps this onto Ray Data."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = 256
    concurrency: int | None = None  # actors in the pool (None: Ray decides / tasks)


class Stage:
    """One per-sample step: ``setup()`` once per worker, then ``__call__`` per batch.

    Subclasses set ``name`` (the recipe key and the prefix of their reject reasons),
    ``Config`` (a StageConfig subclass), ``reads`` (columns needed) and ``adds``
    (columns added, with types). ``__call__`` must return every input row, in order,
    with the added columns present (null for rows it skipped).

    ``checkpoint``: the runner keeps this stage's output for reruns (the download: a
    rerun after a recipe change never fetches a URL again). ``speed_params``: parameters
    that change how fast the stage runs, not what it outputs; left out of its
    fingerprint (pipelines/fingerprint.py), so tuning them keeps finished work.
    """

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    reads: ClassVar[tuple[str, ...]] = ()
    adds: ClassVar[dict[str, pa.DataType]] = {}
    is_global: ClassVar[bool] = False
    checkpoint: ClassVar[bool] = False
    speed_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: StageConfig | None = None, **params):
        if config is None:
            config = self.Config(**params)
        elif params:
            raise TypeError("pass either a config or keyword parameters, not both")
        self.config = config
        self.label = self.name  # the instance name used in reject reasons and counts
        self._ready = False

    def resources(self) -> Resources:
        """Override for model stages (GPU, actor pools, explicit batch sizes)."""
        return Resources()

    def setup(self) -> None:
        """Load heavy things (a model, an automaton) once per worker."""

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def __call__(self, batch: pa.Table) -> pa.Table:  # pragma: no cover - abstract
        raise NotImplementedError

    def reason(self, why: str) -> str:
        """The reject string for this stage: ``"<stage>:<why>"`` (``why`` may end in
        ``=<detail>``, e.g. ``duplicate_of=<uid>``); ``parse_reject`` reads it back."""
        return f"{self.label}:{why}"


class GlobalStage(Stage):
    """A stage that needs the whole dataset once (dedup, balancing).

    The runner calls, in order: ``prepare(batch)`` streaming over every batch
    (per-row work such as hashes or signatures, done in parallel); ``fit(ds)`` once,
    with a Ray Dataset of the prepared *kept* rows; then ``__call__(batch)`` per batch
    using the fitted state. ``fit`` must store its state on ``self`` in a form that
    pickles (the runner ships the fitted stage to the workers) and must not depend on
    how the data is partitioned.
    """

    is_global: ClassVar[bool] = True

    def prepare(self, batch: pa.Table) -> pa.Table:
        return batch

    def fit(self, ds: "ray.data.Dataset") -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stats(self) -> dict[str, pa.Table]:
        """Tables the runner saves as ``out/stats/<label>.<key>.parquet`` for the audit
        (e.g. MetaCLIP entry counts before/after balancing)."""
        return {}

    def summary(self) -> dict:
        """Small JSON-able facts for this stage's manifest entry (e.g. the derived t)."""
        return {}


# ---------------------------------------------------------------- helpers for stages


class Reject(NamedTuple):
    """A reject string's parts: ``"<stage>:<why>=<detail>"``."""

    stage: str  # the stage's label (``input`` for the reader)
    why: str  # e.g. ``duplicate_of``, ``http_4xx``
    detail: str | None  # e.g. the uid kept instead, the HTTP status

    @property
    def reason(self) -> str:
        """``"<stage>:<why>"``: what the funnel and the audit count."""
        return f"{self.stage}:{self.why}"


def parse_reject(value: str) -> Reject:
    """The one reader of reject strings (``Stage.reason`` writes them); ``reject_parts``
    is the same split for a polars frame."""
    reason, _, detail = value.partition("=")
    stage, _, why = reason.partition(":")
    return Reject(stage, why, detail if "=" in value else None)


def reject_parts(column: str = REJECT) -> list["pl.Expr"]:
    """``parse_reject`` vectorised for polars: ``reason`` (``"<stage>:<why>"``),
    ``stage`` and ``detail`` columns from a reject column (the audit reads millions)."""
    import polars as pl

    reason = pl.col(column).str.splitn("=", 2).struct.field("field_0")
    return [reason.alias("reason"), pl.col(column).str.splitn("=", 2).struct.field("field_1").alias("detail"),
            reason.str.splitn(":", 2).struct.field("field_0").alias("stage")]


def kept_mask(batch: pa.Table) -> np.ndarray:
    """Boolean numpy mask of rows still kept (``reject`` is null)."""
    if REJECT not in batch.column_names:
        return np.ones(batch.num_rows, dtype=bool)
    return batch.column(REJECT).is_null().to_numpy(zero_copy_only=False)


def reject_rows(batch: pa.Table, mask, reasons) -> pa.Table:
    """Set ``reject`` where ``mask`` is true and the row is still kept.

    ``reasons`` is one string or an array/list of per-row strings. Rejected rows
    lose their image bytes (the rejects folder keeps no images). Earlier reasons win.
    """
    mask = np.asarray(mask, dtype=bool) & kept_mask(batch)
    if not mask.any():
        return batch
    current = batch.column(REJECT) if REJECT in batch.column_names else pa.nulls(batch.num_rows, pa.string())
    if isinstance(reasons, str):
        new = pa.array(np.where(mask, reasons, None).tolist(), pa.string())
    else:
        new = pa.array([r if m else None for r, m in zip(list(reasons), mask)], pa.string())
    merged = pc.coalesce(current, new)
    batch = set_column(batch, REJECT, merged)
    if "image" in batch.column_names:
        image = batch.column("image")
        nulled = pc.if_else(pa.array(mask), pa.nulls(batch.num_rows, image.type), image)
        batch = set_column(batch, "image", nulled)
    return batch


def set_column(batch: pa.Table, name: str, values) -> pa.Table:
    """Replace or append a column by name."""
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(values)
    index = batch.schema.get_field_index(name)
    if index == -1:
        return batch.append_column(name, values)
    return batch.set_column(index, name, values)


def ensure_columns(batch: pa.Table, columns: dict[str, pa.DataType]) -> pa.Table:
    """Append null columns a stage adds but did not compute for this batch."""
    for name, dtype in columns.items():
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.nulls(batch.num_rows, dtype))
    return batch


def make_uid(url: str, caption: str) -> str:
    """Stable 128-bit uid of a pair (DataComp uses 128-bit uids too)."""
    return hashlib.blake2b(f"{url}\t{caption}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# make_uid's form, in the regex syntax of Arrow (RE2) and polars (Rust): no multiline,
# so ``$`` is the end of the value and a trailing newline does not pass.
UID_PATTERN = r"^[0-9a-f]{32}$"


def check_uids(uids: pa.Array | pa.ChunkedArray, where: str, *, rows=None) -> None:
    """Refuse a uid column unless every value has make_uid's form (``UID_PATTERN``).

    A uid names files (the audit's thumbnails, tar members), and shards, releases and
    exports come from other people's runs: ``../../x`` or ``/abs/x`` would write outside
    the output. One regex pass over the column; ``rows`` gives each value's row in
    ``where`` when the values are not its rows from 0."""
    kind = uids.type
    if pa.types.is_dictionary(kind):
        uids, kind = uids.cast(kind.value_type), kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{where}: the uid column holds {kind}, not strings")
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(uids, UID_PATTERN), False))
    if not pc.any(bad).as_py():
        return
    position = pc.index(bad, True).as_py()
    value = uids[position].as_py()
    shown = "null" if value is None else repr(value) if len(value) <= 48 else repr(value[:48]) + "..."
    row = position if rows is None else int(rows[position])
    raise UserError(f"{where}: row {row}: uid {shown} is not 32 lowercase hex digits (make_uid's form; "
                    f"a uid names files)")


def unit_hash(uids, salt: str, seed: int) -> np.ndarray:
    """Deterministic uniform draws in [0, 1) from (uid, salt, seed): no RNG state.

    Randomness as a function of the sample, so results do not depend on partitions.
    """
    out = np.empty(len(uids), dtype=np.float64)
    for i, uid in enumerate(uids):
        digest = hashlib.blake2b(f"{uid}|{salt}|{seed}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2**64
    return out
