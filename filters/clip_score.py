"""CLIP score: cosine similarity of a pair's image and caption embeddings, and the
DataComp / DFN filters that keep the best-aligned pairs.

CLIP score filtering (Hessel et al., 2021; LAION-400M keeps ViT-B/32 score >= 0.28;
DataComp, Gadre et al., 2023, Sec. 4 and Table 3, keeps the top 30% by ViT-L/14
score) is the strongest single baseline of the DataComp filtering track. Data
Filtering Networks (Fang et al., 2023) score the pool with a CLIP trained on trusted
pairs instead: point ``model`` at a checkpoint of the bundled trainer.

Every kept pair gets ``clip_score`` (float32), and with ``embeddings: true`` the
L2-normalised ``clip_image_emb``/``clip_text_emb`` (float16) for semantic dedup and
the audit. Scores are stored even for pairs the threshold rejects, so the threshold
can be re-tuned and the audit can plot what was cut. Two thresholds, both rejecting
with ``clip_score:below_threshold``:

- ``min_score``: absolute (LAION style), decided per batch;
- ``keep_clean`` + ``reference``: calibrated on the filter model itself: the score that
  keeps ``keep_clean`` of held-out true pairs (a trusted set the model did not train
  on). A fraction of the *pool* (``keep_top``) is right only when the pool's noise share
  is known; this threshold keeps about the same share of clean pairs whatever the noise
  share, and removes as much noise as the model's ranking allows (measured in
  ``bench/curation.py``). Computed once on the driver in ``fit``.
- ``keep_matched``: the pool's own scores are a mixture of matched pairs (high) and
  pairs whose caption describes another picture (low, near 0). A two-component
  Gaussian mixture (scikit-learn) fitted on them gives each score a probability of
  being matched; pairs below ``keep_matched`` are rejected. Unlike ``keep_top`` it
  assumes no noise share, and unlike ``keep_clean`` it does not assume the trusted
  set scores like the pool (on our benchmark pool of photos the trusted pairs scored
  higher than the pool's clean ones, and ``keep_clean: 0.9`` kept only 73 % of them;
  ``keep_matched: 0.5`` kept 99.9 % and removed 98 % of mismatches, and on the product
  pool 95 % / 92 %: bench/filter_model_pool.py, docs/filter-model.md). 0.5 is the
  plain Bayes rule: keep a pair more likely matched than not.
- ``keep_top``: a fraction of the kept pairs (DataComp style). It needs the global
  score distribution, so the stage is then a global stage: ``prepare`` scores every
  batch, ``fit`` finds the DataComp cut (the ``int(n * keep_top)``-th largest score
  over kept pairs), ``__call__`` rejects pairs below it.
  With both set, a pair must pass both.

Score once, filter many: the score (and embedding) columns carry the model's
fingerprint in their field metadata (``clipcurate.model``). A batch whose kept rows
already hold scores from the same model is not scored again, only thresholded, so
threshold variants (``curate ablate``) and re-curation of scored shards cost no model
time; scores from another model are recomputed.

Images that cannot be decoded are rejected as ``clip_score:decode_error``; kept rows
without image bytes as ``clip_score:missing_image``.

Throughput: one actor per GPU (or CPU actors) holds the model, through the shared
batched encoder (``train/clip_model.py``: decode threads overlap the forward pass,
device-side normalise, fp16/bf16 autocast on GPU).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from clipcurate.pipelines.stage import GlobalStage, Resources, StageConfig, ensure_columns, kept_mask, reject_rows, set_column
from clipcurate.train.clip_model import Encoder, model_config, model_fingerprint, resolve_device
from clipcurate.train.embedding_columns import MODEL_KEY, same_model

HISTOGRAM_BINS = 80


class ClipScoreConfig(StageConfig):
    model: str = Field(
        description="open_clip model name (with `pretrained`), 'local-dir:PATH' or a checkpoint directory, "
        "or a JSON model config (with `pretrained` = weights file)"
    )
    pretrained: str | None = Field(None, description="open_clip pretrained tag or weights file (null: random weights)")
    batch_size: int = Field(256, ge=1, description="pairs per forward pass")
    batches_per_task: int = Field(
        4, ge=1, description="forward passes per Ray batch; decoding the next one overlaps the current one"
    )
    concurrency: int = Field(1, ge=1, description="model actors (one per GPU when GPUs exist)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor (decode threads default to this)")
    decode_workers: int | None = Field(None, ge=1, description="decode/tokenize threads per actor (null: num_cpus)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="autocast dtype; auto: fp16 on GPU, fp32 on CPU"
    )
    embeddings: bool = Field(False, description="also write clip_image_emb / clip_text_emb (float16)")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="reject pairs scoring below this")
    keep_top: float | None = Field(None, gt=0.0, le=1.0, description="keep this fraction of pairs with the best scores")
    keep_clean: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="calibrated threshold: the score that keeps this share of the `reference` pairs "
        "(true pairs the filter model did not train on); independent of how noisy the pool is")
    reference: str | None = Field(None, description="parquet of held-out true pairs (image, caption) for keep_clean")
    keep_matched: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="keep pairs at least this likely to belong to the pool's matched-pairs score component "
        "(a two-component Gaussian mixture fitted on the pool's own scores); needs no reference set and no "
        "assumed noise share")

    @model_validator(mode="after")
    def _reference_with_keep_clean(self):
        if (self.keep_clean is None) != (self.reference is None):
            raise ValueError("keep_clean and reference go together")
        return self


class ClipScore(GlobalStage):
    """Score image-caption alignment with a CLIP model; filter by score."""

    name = "clip_score"
    Config = ClipScoreConfig
    reads = ("image", "caption")

    def __init__(self, config: ClipScoreConfig | None = None, **params):
        super().__init__(config, **params)
        self._runtime: Encoder | None = None
        self._embed_dim: int | None = None
        self._fitted: float | None = None  # the keep_top score threshold
        self._fit_done = False
        self._summary: dict = {}
        self._histogram: pa.Table | None = None
        self._model_id: str | None = None
        self._cut_facts: dict = {}  # how keep_clean / keep_matched found their cut, for the manifest

    # -------------------------------------------------------------- declared surface

    @property
    def is_global(self) -> bool:  # type: ignore[override]
        """Global for ``keep_top`` and ``keep_matched`` (they need the whole score
        distribution) and ``keep_clean`` (the reference is scored once, on the driver)."""
        cfg = self.config
        return cfg.keep_top is not None or cfg.keep_clean is not None or cfg.keep_matched is not None

    @property
    def adds(self) -> dict[str, pa.DataType]:  # type: ignore[override]
        columns: dict[str, pa.DataType] = {"clip_score": pa.float32()}
        if self.config.embeddings:
            if self._embed_dim is None:
                self._embed_dim = int(model_config(self.config.model, self.config.pretrained)["embed_dim"])
            columns["clip_image_emb"] = pa.list_(pa.float16(), self._embed_dim)
            columns["clip_text_emb"] = pa.list_(pa.float16(), self._embed_dim)
        return columns

    def resources(self) -> Resources:
        cfg: ClipScoreConfig = self.config
        if self._fit_done:  # keep_top, after fit: comparing stored scores needs no model
            return Resources(num_cpus=1.0, batch_size=cfg.batch_size * cfg.batches_per_task)
        return Resources(
            num_cpus=cfg.num_cpus,
            num_gpus=1.0 if resolve_device(cfg.device).type == "cuda" else 0.0,
            batch_size=cfg.batch_size * cfg.batches_per_task,
            concurrency=cfg.concurrency,
        )

    # ------------------------------------------------------------------------ work

    def setup(self) -> None:
        """Nothing heavy up front: the model loads at the first batch that needs scoring
        (batches scored earlier by the same model, and the fitted keep_top pass, need none)."""

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self._model_id = model_fingerprint(self.config.model, self.config.pretrained)
        return self._model_id

    def prepare(self, batch: pa.Table) -> pa.Table:
        """Global mode, pass 1: score every batch (streaming), no threshold yet."""
        return self._score(batch)

    def fit(self, ds) -> None:
        """Global mode, pass 2: the DataComp cut over the kept pairs' scores.

        DataComp (``baselines/apply_filter.py`` ``get_threshold``) sorts all scores and
        keeps those >= the score at rank ``int(n * fraction)``; we take the
        ``max(1, int(n * keep_top))``-th largest, so exactly that many pairs pass
        (plus ties). Partition-independent: it is a function of the score multiset.
        """
        parts = [np.empty(0, np.float32)]
        for part in ds.select_columns(["clip_score"]).iter_batches(batch_format="pyarrow", batch_size=None):
            parts.append(part.column("clip_score").drop_null().to_numpy().astype(np.float32, copy=False))
        scores = np.concatenate(parts)
        n = scores.size
        cuts = [self._calibrated()] if self.config.keep_clean is not None else []
        if n and self.config.keep_top is not None:
            k = max(1, int(n * self.config.keep_top))
            cuts.append(float(np.partition(scores, n - k)[n - k]))
        if n >= 10 and self.config.keep_matched is not None:
            cuts.append(self._mixture_cut(scores))
        self._fitted = max(cuts) if cuts else None
        counts, edges = np.histogram(scores, bins=HISTOGRAM_BINS, range=(-1.0, 1.0))
        self._histogram = pa.table(
            {
                "bin_start": pa.array(edges[:-1], pa.float32()),
                "bin_end": pa.array(edges[1:], pa.float32()),
                "pairs": pa.array(counts, pa.int64()),
            }
        )
        self._summary = {
            "keep_top": self.config.keep_top,
            "keep_clean": self.config.keep_clean,
            "keep_matched": self.config.keep_matched,
            "min_score": self.config.min_score,
            "threshold": self._fitted,
            "scored": int(n),
            "above_threshold": int((scores >= self._fitted).sum()) if n and self._fitted is not None else n,
            "mean_score": float(scores.mean()) if n else None,
        }
        self._fit_done = True

    def _mixture_cut(self, scores: np.ndarray, most: int = 200_000) -> float:
        """The lowest score whose probability of the matched (higher-mean) component of a
        two-component Gaussian mixture is at least ``keep_matched``. Fitted on at most
        ``most`` evenly spaced order statistics, so it depends only on the scores."""
        from sklearn.mixture import GaussianMixture

        ordered = np.sort(scores.astype(np.float64))
        sample = ordered[np.linspace(0, ordered.size - 1, min(most, ordered.size)).astype(np.int64)]
        mixture = GaussianMixture(2, random_state=0).fit(sample.reshape(-1, 1))
        means = mixture.means_.ravel()
        grid = np.linspace(means.min(), means.max(), 4001)
        matched = mixture.predict_proba(grid.reshape(-1, 1))[:, int(np.argmax(means))]
        above = np.flatnonzero(matched >= self.config.keep_matched)
        cut = float(grid[above[0]]) if above.size else float(means.max())
        self._cut_facts |= {"mixture_means": [round(float(m), 4) for m in sorted(means)],
                                 "matched_share": round(float(mixture.weights_[int(np.argmax(means))]), 4),
                                 "mixture_threshold": cut}
        return cut

    def _calibrated(self) -> float:
        """The (1 - keep_clean) quantile of the model's scores on the reference pairs."""
        import pyarrow.parquet as pq

        reference = pq.read_table(self.config.reference, columns=["image", "caption"])
        if self._runtime is None:
            self._runtime = self._load()
        result = self._runtime.pairs(reference.column("image").to_pylist(),
                                     pc.fill_null(reference.column("caption"), "").to_pylist(), self.config.batch_size)
        scores = (result.image * result.text).sum(axis=1)
        if scores.size == 0:
            raise ValueError(f"{self.label}: no decodable reference pairs in {self.config.reference}")
        threshold = float(np.quantile(scores, 1.0 - self.config.keep_clean))
        self._cut_facts |= {"reference_pairs": int(scores.size), "calibrated_threshold": threshold}
        self._runtime.close()
        self._runtime = None  # workers load their own; the driver needs no model after fit
        return threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.is_global:
            if not self._fit_done:
                raise RuntimeError(f"{self.label}: keep_top/keep_clean/keep_matched need fit() over the dataset "
                                   "before __call__")
            if "clip_score" not in batch.column_names:  # the runner passes prepared batches
                batch = self._score(batch)
        else:
            batch = self._score(batch)
        threshold = max(t for t in (self.config.min_score, self._fitted, -np.inf) if t is not None)
        if np.isfinite(threshold):
            below = pc.fill_null(pc.less(batch.column("clip_score"), threshold), False)
            batch = reject_rows(batch, below.to_numpy(zero_copy_only=False), self.reason("below_threshold"))
        return batch

    def stats(self) -> dict[str, pa.Table]:
        return {"histogram": self._histogram} if self._histogram is not None else {}

    def summary(self) -> dict:
        return {**self._summary, **self._cut_facts}

    def __getstate__(self) -> dict:
        """Ship config and fitted state, never the model or threads (workers set up)."""
        state = self.__dict__.copy()
        state["_runtime"] = None
        state["_ready"] = False
        return state

    # ----------------------------------------------------------------------- scoring

    def _load(self) -> Encoder:
        cfg: ClipScoreConfig = self.config
        return Encoder(cfg.model, cfg.pretrained, device=cfg.device, precision=cfg.precision,
                       decode_workers=cfg.decode_workers or max(1, int(cfg.num_cpus)))

    def _score(self, batch: pa.Table) -> pa.Table:
        """Add the score (and embedding) columns for kept rows; reject undecodable ones."""
        self.ensure_setup()
        adds = self.adds
        keep = kept_mask(batch)
        has_image = pc.is_valid(batch.column("image")).to_numpy(zero_copy_only=False)
        batch = reject_rows(batch, keep & ~has_image, self.reason("missing_image"))
        rows = np.flatnonzero(keep & has_image)
        if rows.size == 0 or self._scored_before(batch, rows):
            return self._mark(ensure_columns(batch, adds))
        if self._runtime is None:
            self._runtime = self._load()

        take = pa.array(rows)
        images = batch.column("image").take(take).to_pylist()
        captions = pc.fill_null(batch.column("caption").take(take), "").to_pylist()
        result = self._runtime.pairs(images, captions, self.config.batch_size)

        scored = rows[result.decoded]
        index = np.full(batch.num_rows, -1, dtype=np.int64)
        index[scored] = np.arange(scored.size)
        gather = pa.array(index, mask=index < 0)
        scores = (result.image * result.text).sum(axis=1)
        batch = set_column(batch, "clip_score", pa.array(scores, pa.float32()).take(gather))
        if self.config.embeddings:
            dim = result.image.shape[1]
            for column, values in (("clip_image_emb", result.image), ("clip_text_emb", result.text)):
                fixed = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float16()), dim)
                batch = set_column(batch, column, fixed.take(gather))
        failed = np.zeros(batch.num_rows, dtype=bool)
        failed[rows[~result.decoded]] = True
        batch = reject_rows(batch, failed, self.reason("decode_error"))
        return self._mark(ensure_columns(batch, adds))

    def _scored_before(self, batch: pa.Table, rows: np.ndarray) -> bool:
        """True when every row to score already has a score (and embeddings, if asked
        for) made by this stage's model."""
        for column in self.adds:
            if column not in batch.column_names:
                return False
            metadata = batch.schema.field(column).metadata or {}
            if not same_model((metadata.get(MODEL_KEY) or b"").decode(), self.model_id):
                return False
        return batch.column("clip_score").take(pa.array(rows)).null_count == 0

    def _mark(self, batch: pa.Table) -> pa.Table:
        """Record the model's fingerprint on the columns it made."""
        fields = [f.with_metadata({MODEL_KEY: self.model_id.encode()}) if f.name in self.adds else f
                  for f in batch.schema]
        return pa.Table.from_arrays(batch.columns, schema=pa.schema(fields, metadata=batch.schema.metadata))
