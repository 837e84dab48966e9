"""language_filter: fastText lid.176 (bundled, lite) offline; lang columns, keep_languages."""

from __future__ import annotations

import socket

import pyarrow as pa
import pytest

from filters.language import LanguageFilter

CAPTIONS = {
    "en": "a brown dog running on the beach at sunset",
    "de": "Ein brauner Hund läuft bei Sonnenuntergang am Strand",
    "fr": "un chien brun qui court sur la plage au coucher du soleil",
    "es": "un perro marrón corriendo en la playa al atardecer",
    "ja": "夕暮れのビーチを走る茶色の犬",
    "ru": "коричневая собака бежит по пляжу на закате",
}


def table() -> pa.Table:
    uids = list(CAPTIONS) + ["blank", "rejected"]
    captions = list(CAPTIONS.values()) + ["   ", "a photo of a cat"]
    return pa.table(
        {
            "uid": pa.array(uids, pa.string()),
            "caption": pa.array(captions, pa.string()),
            "reject": pa.array([None] * (len(uids) - 1) + ["basic_filter:image_too_small"], pa.string()),
        }
    )


@pytest.fixture
def offline(monkeypatch):
    """No network: any socket connection attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_annotates_languages_offline_and_keeps_all_by_default(offline):
    out = LanguageFilter()(table())
    lang = dict(zip(out.column("uid").to_pylist(), out.column("lang").to_pylist()))
    for code in CAPTIONS:
        assert lang[code] == code
    assert lang["blank"] is None and lang["rejected"] is None  # no text / not looked at
    scores = out.column("lang_score").to_pylist()
    assert out.column("lang_score").type == pa.float32()
    assert all(0.5 < s <= 1.0 for s in scores[: len(CAPTIONS)])
    assert out.column("reject").to_pylist()[:-1] == [None] * (len(CAPTIONS) + 1)


def test_keep_languages_rejects_others_with_the_language(offline):
    out = LanguageFilter(keep_languages=["en", "de"])(table())
    got = dict(zip(out.column("uid").to_pylist(), out.column("reject").to_pylist()))
    assert got["en"] is None and got["de"] is None
    assert got["fr"] == "language_filter:language=fr"
    assert got["ja"] == "language_filter:language=ja"
    assert got["blank"] == "language_filter:no_text"
    assert got["rejected"] == "basic_filter:image_too_small"


def test_min_score_rejects_unsure_predictions(offline):
    batch = pa.table({"uid": ["sure", "unsure"], "caption": [CAPTIONS["en"], "IMG 2093"]})
    out = LanguageFilter(min_score=0.5)(batch)
    got = dict(zip(out.column("uid").to_pylist(), out.column("reject").to_pylist()))
    assert out.column("lang_score").to_pylist()[1] < 0.5
    assert got == {"sure": None, "unsure": "language_filter:low_confidence"}


def test_rows_already_rejected_get_no_language(offline):
    out = LanguageFilter(keep_languages=["en"])(table().slice(6))
    assert out.column("lang").to_pylist() == [None, None]
    assert out.column("reject").to_pylist() == ["language_filter:no_text", "basic_filter:image_too_small"]
