"""Text spotting for the CAT filter: decode, read the text in an image, compare to the caption.

OCR is RapidOCR (``rapidocr-onnxruntime``): PaddleOCR's PP-OCRv4 detection and
recognition models exported to ONNX and shipped inside the wheel, so it runs offline.
Tokenisation and the overlap measure are defined in docs/cat.md.
"""

from __future__ import annotations

import io
import re
import unicodedata

import numpy as np
from PIL import Image

_WORD = re.compile(r"[^\W_]+")  # runs of unicode letters and digits
# Caption tokens at least this long also match inside the OCR text with its spaces
# removed: the recogniser often drops the gaps between words ("keepcalmandcarryon").
MIN_SUBSTRING_CHARS = 4
# English function words: articles, pronouns, prepositions, conjunctions, auxiliaries.
# Deliberately short (spaCy's stop list also drops content words such as "keep", "front",
# "top"), so the overlap is measured on the words that say what the caption is about.
FUNCTION_WORDS = frozenset(
    """
    a an the this that these those some any each every no
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
    who whom whose which what where when why how there here
    of in on at to from by with without into onto over under above below near for about as
    than through across along around between behind beside after before during upon off out up down
    and or but nor so yet if then because while
    is are was were be been being am do does did has have had having will would shall should can could may
    might must not
    """.split()
)


class TextSpotter:
    """One RapidOCR engine (detection + direction classifier + recognition)."""

    def __init__(self, *, side: int, min_score: float, threads: int):
        from rapidocr_onnxruntime import RapidOCR

        self.side = side
        # "max": scale the longest side down to `side` for detection. The package default
        # ("min") scales the shortest side *up* to 736 px, about 5x slower on web images.
        self._engine = RapidOCR(
            det_limit_type="max",
            det_limit_side_len=side,
            text_score=min_score,
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
        )

    def read(self, image_bgr: np.ndarray) -> str:
        """The recognised text lines in reading order, joined by single spaces."""
        lines, _ = self._engine(image_bgr)
        return " ".join(line[1] for line in lines) if lines else ""


def decode_bgr(data: bytes, side: int) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 BGR (RapidOCR's layout). Raises on bad bytes.

    JPEGs are decoded at the smallest DCT scale that keeps both sides >= ``side``.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (side, side))
        rgb = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def words(text: str) -> list[str]:
    """NFKC-normalised, case-folded runs of letters and digits."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def caption_terms(caption: str) -> set[str]:
    """The caption words that carry content: no function words, no 1-character tokens.

    Falls back to every word when nothing is left (a caption made only of stop words).
    """
    all_words = set(words(caption))
    content = {w for w in all_words if len(w) > 1 and w not in FUNCTION_WORDS}
    return content or all_words


def ocr_overlap(caption: str, ocr_text: str) -> float:
    """Share of the caption's content words that appear in the OCR text (0 when either is empty)."""
    terms = caption_terms(caption)
    ocr_words = words(ocr_text)
    if not terms or not ocr_words:
        return 0.0
    ocr_set = set(ocr_words)
    squashed = "".join(ocr_words)
    found = sum(1 for t in terms if t in ocr_set or (len(t) >= MIN_SUBSTRING_CHARS and t in squashed))
    return found / len(terms)
