"""Learned heads over CLIP embeddings: NSFW, aesthetic, watermark or your own, one score
column each, filtered by threshold or by share like ``clip_score``.

LAION-5B was cut by such heads on CLIP ViT-L/14 embeddings (Schuhmann et al. 2022,
Sec. 3: ``punsafe`` from the CLIP-based NSFW detector, ``pwatermark``, and the aesthetic
predictor behind LAION-Aesthetics); NeMo Curator and Data-Juicer ship the same filters.
A head (``train/heads.py``) is a small linear or MLP network trained on the embeddings
of one CLIP model; its file names that model. The stage:

- writes ``<name>_score`` (float32) for every kept row it could embed, also for rows the
  thresholds then reject, so thresholds can be re-tuned and the audit can plot them;
- reads the ``clip_image_emb`` / ``clip_text_emb`` columns ``clip_score`` stored
  (``embeddings: true``) when their field metadata names the heads' model, and runs the
  shared encoder (``train/clip_model.py``) only for rows without them: no second
  forward pass over what clip_score already embedded;
- refuses, when the recipe loads, a head trained on another model than the stage's
  (or than the other heads'), in one line that names both;
- per head: ``min_score`` / ``max_score`` (absolute, decided per batch) and ``keep_top``
  / ``keep_bottom`` (a share of the kept rows: DataComp's cut, the
  ``max(1, int(n * share))``-th best score; the stage is then global, like clip_score
  with ``keep_top``). Reasons: ``clip_heads:<name>_too_low``, ``clip_heads:<name>_too_high``;
  a row gets the reason of the first head (in recipe order) that rejects it.
- a score column made by the same head file (field metadata ``clipcurate.head``) on
  every kept row is reused: threshold variants cost no model time.

Rows without image bytes (and no stored embedding) are rejected as
``clip_heads:missing_image``, images that do not decode as ``clip_heads:decode_error``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from clipcurate.filters._embeddings import EmbeddingSource
from clipcurate.pipelines import fingerprint as fp
from clipcurate.pipelines.stage import GlobalStage, Resources, StageConfig, ensure_columns, kept_mask, reject_rows, set_column
from clipcurate.train.embedding_columns import same_model
from clipcurate.train.heads import Head, head_model_fingerprint, load_head

HEAD_KEY = b"clipcurate.head"  # field metadata of a score column: the digest of the head file that made it
HISTOGRAM_BINS = 40


class HeadSpec(BaseModel):
    """One head of the stage and its keep rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$",
                      description="head name; its score column is <name>_score (nsfw, aesthetic, watermark, ...)")
    path: str = Field(description="head file (`curate heads train`) or a published state dict (see format)")
    format: Literal["clipcurate", "laion_aesthetic", "laion_nsfw_h14"] = Field(
        "clipcurate", description="clipcurate, or a published head: laion_aesthetic (improved aesthetic "
        "predictor, ViT-L/14), laion_nsfw_h14 (LAION's ViT-H/14 NSFW detector)")
    min_score: float | None = Field(None, description="reject rows scoring below this")
    max_score: float | None = Field(None, description="reject rows scoring above this (e.g. nsfw probability)")
    keep_top: float | None = Field(None, gt=0.0, le=1.0, description="keep this share of rows with the highest scores")
    keep_bottom: float | None = Field(None, gt=0.0, le=1.0,
                                      description="keep this share of rows with the lowest scores")

    @model_validator(mode="after")
    def _one_share(self):
        if self.keep_top is not None and self.keep_bottom is not None:
            raise ValueError(f"head '{self.name}': keep_top and keep_bottom exclude each other")
        if self.name == "clip":
            raise ValueError("head name 'clip' would write clip_score, the clip_score stage's column")
        return self

    @property
    def column(self) -> str:
        return f"{self.name}_score"


class ClipHeadsConfig(StageConfig):
    model: str | None = Field(None, description="CLIP model the heads read (open_clip name, local-dir:PATH or a "
                              "checkpoint folder); default: the model the head files name")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or weights file for `model`")
    heads: list[HeadSpec] = Field(min_length=1, description="the heads, each with its keep rule")
    batch_size: int = Field(256, ge=1, description="rows per forward pass when the stage embeds images itself")
    concurrency: int = Field(1, ge=1, description="actors (one per GPU when GPUs exist)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"

    @field_validator("heads")
    @classmethod
    def _heads_share_the_model(cls, heads: list[HeadSpec], info: ValidationInfo) -> list[HeadSpec]:
        """Unique names; every head reads the stage's model (one line naming both otherwise)."""
        names = [h.name for h in heads]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"head name '{twice[0]}' given twice")
        model, pretrained = info.data.get("model"), info.data.get("pretrained")
        stage_model, first = None, None
        if model is not None:
            from clipcurate.train.clip_model import model_fingerprint

            stage_model, first = model_fingerprint(model, pretrained), "the stage's model"
        for spec in heads:
            try:
                head = load_head(spec.path, spec.format, name=spec.name)
            except FileNotFoundError as err:  # pydantic reports ValueErrors only
                raise ValueError(str(err)) from None
            reads = head_model_fingerprint(head)
            if stage_model is None:
                stage_model, first = reads, f"head '{spec.name}'"
            elif not same_model(reads, stage_model):
                raise ValueError(f"head '{spec.name}' ({spec.path}) reads embeddings of {_short(reads)}, "
                                 f"{first} is {_short(stage_model)}: train the head on that model's embeddings")
        return heads


class ClipHeads(GlobalStage):
    """Score kept rows with heads over CLIP embeddings; filter by each head's rule."""

    name = "clip_heads"
    Config = ClipHeadsConfig
    reads = ("image",)

    def __init__(self, config: ClipHeadsConfig | None = None, **params):
        super().__init__(config, **params)
        self._heads: list[Head] | None = None
        self._source: EmbeddingSource | None = None
        self._cuts: dict[str, float] = {}  # fitted keep_top / keep_bottom thresholds per head
        self._fit_done = False
        self._facts: dict[str, dict] = {}
        self._histograms: dict[str, pa.Table] = {}
        self._head_digests: list[bytes] | None = None

    # -------------------------------------------------------------- declared surface

    @property
    def is_global(self) -> bool:  # type: ignore[override]
        """Global when a head keeps a share of rows (it needs every row's score)."""
        return any(h.keep_top is not None or h.keep_bottom is not None for h in self.config.heads)

    @property
    def adds(self) -> dict[str, pa.DataType]:  # type: ignore[override]
        return {spec.column: pa.float32() for spec in self.config.heads}

    def resources(self) -> Resources:
        cfg: ClipHeadsConfig = self.config
        if self._fit_done:  # after fit: comparing stored scores needs no model
            return Resources(num_cpus=1.0, batch_size=cfg.batch_size * 4)
        gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        return Resources(num_cpus=cfg.num_cpus, num_gpus=1.0 if gpu else 0.0, batch_size=cfg.batch_size * 4,
                         concurrency=cfg.concurrency)

    # ------------------------------------------------------------------------ work

    def setup(self) -> None:
        """Load the heads (small); the CLIP model loads only if a batch lacks stored embeddings."""
        self._load()

    def prepare(self, batch: pa.Table) -> pa.Table:
        return self._score(batch)

    def fit(self, ds) -> None:
        """The keep_top / keep_bottom cuts over the kept rows' scores (DataComp's rule:
        exactly ``max(1, int(n * share))`` rows pass, plus ties); histograms for the audit."""
        columns = [spec.column for spec in self.config.heads]
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        for part in ds.select_columns(columns).iter_batches(batch_format="pyarrow", batch_size=None):
            for column in columns:
                parts[column].append(part.column(column).drop_null().to_numpy().astype(np.float32, copy=False))
        for spec in self.config.heads:
            scores = np.concatenate(parts[spec.column]) if parts[spec.column] else np.zeros(0, np.float32)
            n = scores.size
            if n and spec.keep_top is not None:
                k = max(1, int(n * spec.keep_top))
                self._cuts[spec.name] = float(np.partition(scores, n - k)[n - k])
            if n and spec.keep_bottom is not None:
                k = max(1, int(n * spec.keep_bottom))
                self._cuts[spec.name] = float(np.partition(scores, k - 1)[k - 1])
            self._facts[spec.name] = {"scored": int(n), "mean": float(scores.mean()) if n else None,
                                      "cut": self._cuts.get(spec.name)}
            if n:
                counts, edges = np.histogram(scores, bins=HISTOGRAM_BINS)
                self._histograms[spec.name] = pa.table({"bin_start": pa.array(edges[:-1], pa.float32()),
                                                        "bin_end": pa.array(edges[1:], pa.float32()),
                                                        "rows": pa.array(counts, pa.int64())})
        self._fit_done = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.is_global:
            if not self._fit_done:
                raise RuntimeError(f"{self.label}: keep_top/keep_bottom need fit() over the dataset before __call__")
            if any(spec.column not in batch.column_names for spec in self.config.heads):
                batch = self._score(batch)
        else:
            batch = self._score(batch)
        for spec in self.config.heads:
            low, high = self._bounds(spec)
            scores = batch.column(spec.column)
            if low is not None:
                below = pc.fill_null(pc.less(scores, low), False).to_numpy(zero_copy_only=False)
                batch = reject_rows(batch, below, self.reason(f"{spec.name}_too_low"))
            if high is not None:
                above = pc.fill_null(pc.greater(scores, high), False).to_numpy(zero_copy_only=False)
                batch = reject_rows(batch, above, self.reason(f"{spec.name}_too_high"))
        return batch

    def stats(self) -> dict[str, pa.Table]:
        return {f"{name}.histogram": table for name, table in self._histograms.items()}

    def summary(self) -> dict:
        """Per head: its column, model, output meaning and keep rule (the audit reads this)."""
        heads = []
        for spec in self.config.heads:
            low, high = self._bounds(spec)
            heads.append({"name": spec.name, "column": spec.column, "format": spec.format,
                          "min_score": low, "max_score": high, "keep_top": spec.keep_top,
                          "keep_bottom": spec.keep_bottom, **self._facts.get(spec.name, {})})
        return {"heads": heads}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_heads"] = None
        state["_head_digests"] = None
        state["_ready"] = False
        return state

    # ---------------------------------------------------------------------- scoring

    def _bounds(self, spec: HeadSpec) -> tuple[float | None, float | None]:
        """(lowest kept score, highest kept score) from the absolute and fitted rules."""
        cut = self._cuts.get(spec.name)
        low = [v for v in (spec.min_score, cut if spec.keep_top is not None else None) if v is not None]
        high = [v for v in (spec.max_score, cut if spec.keep_bottom is not None else None) if v is not None]
        return (max(low) if low else None), (min(high) if high else None)

    def _load(self) -> list[Head]:
        if self._heads is None:
            cfg: ClipHeadsConfig = self.config
            self._heads = [load_head(spec.path, spec.format, name=spec.name) for spec in cfg.heads]
            if self._source is None:
                model, pretrained = cfg.model, cfg.pretrained
                if model is None:  # the heads' own model (the config checked they agree)
                    first = self._heads[0].model
                    model, pretrained = first["spec"], first.get("pretrained")
                self._source = EmbeddingSource(model, pretrained, device=cfg.device, precision=cfg.precision,
                                               batch_size=cfg.batch_size)
        return self._heads

    def _digests(self) -> list[bytes]:
        """Content digests of the head files (cached per worker with the heads)."""
        if self._head_digests is None:
            self._head_digests = [fp.digest([fp.path_digest(Path(spec.path)), spec.format]).encode()
                                  for spec in self.config.heads]
        return self._head_digests

    def _score(self, batch: pa.Table) -> pa.Table:
        """Add every head's score column for the kept rows it can embed."""
        self.ensure_setup()
        heads = self._load()
        digests = self._digests()
        rows = np.flatnonzero(kept_mask(batch))
        if rows.size == 0 or self._scored_before(batch, rows, digests):
            return self._mark(ensure_columns(batch, self.adds), digests)
        text = any(head.input == "image+text" for head in heads)
        embedded = self._source.embed(batch, rows, text=text)
        index = np.full(batch.num_rows, -1, dtype=np.int64)
        index[embedded.rows] = np.arange(embedded.rows.size)
        gather = pa.array(index, mask=index < 0)
        for spec, head in zip(self.config.heads, heads):
            if embedded.rows.size:
                if embedded.image.shape[1] * (2 if head.input == "image+text" else 1) != head.in_dim:
                    raise ValueError(f"{self.label}: head '{spec.name}' takes {head.in_dim} inputs, the embeddings "
                                     f"have {embedded.image.shape[1]} dimensions")
                scores = head.score(head.features(embedded.image, embedded.text))
            else:
                scores = np.zeros(0, np.float32)
            batch = set_column(batch, spec.column, pa.array(scores, pa.float32()).take(gather))
        for rows_of, why in ((embedded.missing, "missing_image"), (embedded.failed, "decode_error")):
            mask = np.zeros(batch.num_rows, dtype=bool)
            mask[rows_of] = True
            batch = reject_rows(batch, mask, self.reason(why))
        return self._mark(ensure_columns(batch, self.adds), digests)

    def _scored_before(self, batch: pa.Table, rows: np.ndarray, digests: list[bytes]) -> bool:
        for spec, digest in zip(self.config.heads, digests):
            if spec.column not in batch.column_names:
                return False
            if (batch.schema.field(spec.column).metadata or {}).get(HEAD_KEY) != digest:
                return False
            if batch.column(spec.column).take(pa.array(rows)).null_count:
                return False
        return True

    def _mark(self, batch: pa.Table, digests: list[bytes]) -> pa.Table:
        """Record which head file made each score column."""
        by_column = {spec.column: digest for spec, digest in zip(self.config.heads, digests)}
        fields = [f.with_metadata({**(f.metadata or {}), HEAD_KEY: by_column[f.name]}) if f.name in by_column else f
                  for f in batch.schema]
        return pa.Table.from_arrays(batch.columns, schema=pa.schema(fields, metadata=batch.schema.metadata))


def _short(fingerprint: str) -> str:
    """``spec|pretrained`` of a fingerprint, for one-line errors."""
    spec, pretrained, _ = fingerprint.rsplit("|", 2)
    return spec if pretrained in ("None", "") else f"{spec} ({pretrained})"
