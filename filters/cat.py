"""CAT filter: caption Complexity, Action, and Text-spotting (DiHT, Radenovic et al., CVPR 2023).

DiHT ("Filtering, Distillation, and Hard Negatives for Vision-Language Pre-Training")
keeps web pairs whose caption describes a scene (objects with attributes or
relations, and something happening) and drops pairs whose caption merely transcribes
the text visible in the image, which teaches a CLIP model to read instead of to see.
The paper released no filter code; this is one documented, configurable reading of it.
Exact definitions, defaults and where they differ from the paper: docs/cat.md.

Rules, cheapest first, each with its own reason and measured column:

- ``cat_filter:low_complexity`` -- ``cat_complexity`` (max number of children of a token in the
  caption's dependency parse, function-word edges not counted) < ``min_complexity``;
- ``cat_filter:no_action`` -- ``cat_actions`` (verbs that act) < ``min_actions``;
- ``cat_filter:text_spotting`` -- ``cat_ocr_overlap`` (share of the caption's content words
  found in the image's OCR text) >= ``max_ocr_overlap``. OCR runs only on rows that
  the text rules kept; ``cat_filter:undecodable_image`` when the image bytes do not decode.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from clipcurate.filters._cat_text import CaptionParser, load_parser
from clipcurate.filters._ocr import TextSpotter, decode_bgr, ocr_overlap
from clipcurate.pipelines.stage import Resources, Stage, StageConfig, ensure_columns, kept_mask, reject_rows, set_column


class CatConfig(StageConfig):
    """Thresholds of the three rules, and how the OCR workers run."""

    min_complexity: int = Field(1, ge=0, description="keep captions whose complexity is >= this (0: rule off)")
    ignore_deps: tuple[str, ...] = Field(
        ("det", "predet", "punct"),
        description="dependency labels not counted as children (empty: count every child)",
    )
    min_actions: int = Field(1, ge=0, description="keep captions with >= this many acting verbs (0: rule off)")
    action_mode: Literal["subject", "any"] = Field(
        "subject",
        description="subject: a verb with a nominal subject (or an -ing verb modifying a noun); any: any VB* verb",
    )
    max_caption_chars: int = Field(1000, ge=1, description="parse at most this many leading characters")
    text_spotting: bool = Field(True, description="run OCR and the text-spotting rule")
    max_ocr_overlap: float = Field(0.5, gt=0.0, le=1.0, description="reject when caption/OCR overlap >= this")
    ocr_min_score: float = Field(0.5, ge=0.0, le=1.0, description="drop OCR lines recognised with lower confidence")
    ocr_side: int = Field(736, ge=32, description="longest image side (px) seen by the text detector")
    batch_size: int = Field(64, ge=1, description="rows per batch sent to one worker")
    concurrency: int = Field(2, ge=1, description="worker actors (each loads spaCy and the OCR models once)")
    threads: int = Field(1, ge=1, description="CPUs per worker (ONNX Runtime intra-op threads)")


class CatFilter(Stage):
    """DiHT's CAT filter: reject non-descriptive captions and captions that read the image's text."""

    name = "cat_filter"
    Config = CatConfig
    reads: ClassVar[tuple[str, ...]] = ("caption", "image")
    adds: ClassVar[dict[str, pa.DataType]] = {
        "cat_complexity": pa.int32(),
        "cat_actions": pa.int32(),
        "cat_ocr_overlap": pa.float32(),
        "cat_ocr_text": pa.string(),
    }

    config: CatConfig

    def resources(self) -> Resources:
        cfg = self.config
        return Resources(num_cpus=cfg.threads, batch_size=cfg.batch_size, concurrency=cfg.concurrency)

    def setup(self) -> None:
        cfg = self.config
        self._parser = CaptionParser(
            load_parser(),
            ignore_deps=cfg.ignore_deps,
            action_mode=cfg.action_mode,
            max_chars=cfg.max_caption_chars,
        )
        self._spotter = (
            TextSpotter(side=cfg.ocr_side, min_score=cfg.ocr_min_score, threads=cfg.threads)
            if cfg.text_spotting
            else None
        )

    def __getstate__(self) -> dict:
        # Ship the config, not the loaded models: each worker runs setup() itself.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_parser", "_spotter")}
        state["_ready"] = False
        return state

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        cfg = self.config
        n = batch.num_rows
        todo = np.flatnonzero(kept_mask(batch))
        if len(todo) == 0:
            return ensure_columns(batch, self.adds)

        measures = self._parser.measure(batch.column("caption").take(todo).to_pylist())
        reasons = np.full(n, None, dtype=object)
        low = measures.complexity < cfg.min_complexity
        no_action = ~low & (measures.actions < cfg.min_actions)
        reasons[todo[low]] = self.reason("low_complexity")
        reasons[todo[no_action]] = self.reason("no_action")

        overlap = np.zeros(n, dtype=np.float32)
        measured = np.zeros(n, dtype=bool)
        ocr_text = np.full(n, None, dtype=object)
        spot = todo[~low & ~no_action]
        if self._spotter is not None and "image" in batch.column_names and len(spot):
            spot = spot[batch.column("image").take(spot).is_valid().to_numpy(zero_copy_only=False)]
            captions = batch.column("caption").take(spot).to_pylist()
            for row, caption, data in zip(spot, captions, batch.column("image").take(spot).to_pylist()):
                try:
                    image = decode_bgr(data, cfg.ocr_side)
                except Exception:  # any undecodable payload is a per-row verdict, not a crash
                    reasons[row] = self.reason("undecodable_image")
                    continue
                ocr_text[row] = self._spotter.read(image)
                overlap[row] = ocr_overlap(caption or "", ocr_text[row])
                measured[row] = True
            spotted = measured & (overlap >= cfg.max_ocr_overlap)
            reasons[spotted] = self.reason("text_spotting")

        parsed = np.zeros(n, dtype=bool)
        parsed[todo] = True
        batch = set_column(batch, "cat_complexity", _scatter(n, todo, measures.complexity, parsed, pa.int32()))
        batch = set_column(batch, "cat_actions", _scatter(n, todo, measures.actions, parsed, pa.int32()))
        batch = set_column(batch, "cat_ocr_overlap", pa.array(overlap, type=pa.float32(), mask=~measured))
        batch = set_column(batch, "cat_ocr_text", pa.array(ocr_text.tolist(), type=pa.string()))
        return reject_rows(batch, reasons.astype(bool), reasons.tolist())


def _scatter(n: int, rows: np.ndarray, values: np.ndarray, present: np.ndarray, dtype: pa.DataType) -> pa.Array:
    full = np.zeros(n, dtype=values.dtype)
    full[rows] = values
    return pa.array(full, type=dtype, mask=~present)
