"""DataComp's basic filter: cheap caption and image-size rules, one reason per rule.

DataComp (Gadre et al., 2023, Sec. 3.2 and Table 3; ``baselines/apply_filter.py``
``load_uids_with_basic_filter_helper``) keeps a pair when the caption has more than
2 words (``len(caption.split()) > 2``) and more than 5 characters, the shorter image
side is at least 200 px and the aspect ratio (long side / short side) is at most 3.
Its English-only rule is the ``language_filter`` stage here.

Each rule rejects with its own reason, checked in this order (the first failing rule
is recorded): ``empty_caption`` (null, empty or only whitespace), ``too_few_words``,
``caption_too_short`` (characters counted after trimming outer whitespace),
``image_too_small``, ``aspect_ratio``. Like DataComp (``original_width``/``original_height``)
the image rules judge the size as served, before the download stage resized it: they
read ``original_width``/``original_height`` where download set them, else
``width``/``height``. A row whose size is unknown (null, e.g. when the filter runs on
captions before download) is not judged on size.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from clipcurate.pipelines.stage import Resources, Stage, StageConfig, kept_mask, reject_rows


class BasicFilterConfig(StageConfig):
    min_words: int = Field(3, ge=0, description="keep captions with at least this many words (DataComp: > 2)")
    min_chars: int = Field(6, ge=0, description="keep captions with at least this many characters (DataComp: > 5)")
    min_image_side: int = Field(200, ge=0, description="keep images whose shorter side is at least this (px)")
    max_aspect_ratio: float = Field(3.0, ge=1.0, description="keep images with long/short side at most this")


class BasicFilter(Stage):
    """Caption length and image size/shape rules from DataComp's basic filter."""

    name = "basic_filter"
    Config = BasicFilterConfig
    reads = ("caption", "width", "height")
    adds: dict[str, pa.DataType] = {}

    def resources(self) -> Resources:
        return Resources(num_cpus=1.0, batch_size=4096)

    def __call__(self, batch: pa.Table) -> pa.Table:
        cfg: BasicFilterConfig = self.config
        if batch.num_rows == 0 or not kept_mask(batch).any():
            return batch
        caption = pc.utf8_trim_whitespace(batch.column("caption"))
        chars = _filled(pc.utf8_length(caption), 0)
        words = np.where(chars > 0, _filled(pc.list_value_length(pc.utf8_split_whitespace(caption)), 0), 0)
        width = _sizes(batch, "original_width", "width")
        height = _sizes(batch, "original_height", "height")
        short = np.fmin(width, height)
        long = np.fmax(width, height)
        known = ~np.isnan(short)
        with np.errstate(divide="ignore", invalid="ignore"):
            aspect = np.where(known & (short > 0), long / np.where(short > 0, short, 1), np.inf)

        rules = [
            ("empty_caption", words == 0),
            ("too_few_words", words < cfg.min_words),
            ("caption_too_short", chars < cfg.min_chars),
            ("image_too_small", known & (short < cfg.min_image_side)),
            ("aspect_ratio", known & (aspect > cfg.max_aspect_ratio)),
        ]
        for why, mask in rules:
            batch = reject_rows(batch, mask, self.reason(why))
        return batch


def _filled(values: pa.ChunkedArray | pa.Array, fill: int) -> np.ndarray:
    return pc.fill_null(values, fill).to_numpy(zero_copy_only=False)


def _sizes(batch: pa.Table, *columns: str) -> np.ndarray:
    """The first known of ``columns`` per row as float64, NaN where none is known."""
    present = [pc.cast(batch.column(c), pa.float64()) for c in columns if c in batch.column_names]
    if not present:
        return np.full(batch.num_rows, np.nan)
    values = pc.coalesce(*present) if len(present) > 1 else present[0]
    return pc.fill_null(values, float("nan")).to_numpy(zero_copy_only=False)
