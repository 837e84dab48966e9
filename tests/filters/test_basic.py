"""basic_filter: DataComp's basic rules, each with its own reject reason."""

from __future__ import annotations

import pyarrow as pa
import pydantic
import pytest

from clipcurate.filters.basic import BasicFilter

ROWS = [
    # uid, caption, width, height, expected reject
    ("keep", "a brown dog runs on the beach", 640, 480, None),
    ("keep_square_200", "three red apples", 200, 200, None),
    ("keep_ratio_3", "a long panorama of mountains", 900, 300, None),
    ("keep_unknown_size", "a caption before download", None, None, None),
    ("empty", "", 640, 480, "basic_filter:empty_caption"),
    ("blank", " \t\n ", 640, 480, "basic_filter:empty_caption"),
    ("null", None, 640, 480, "basic_filter:empty_caption"),
    ("two_words", "sunset beach", 640, 480, "basic_filter:too_few_words"),
    ("padded_two_words", "   sunset    beach   ", 640, 480, "basic_filter:too_few_words"),
    ("five_chars", "a b c", 640, 480, "basic_filter:caption_too_short"),
    ("small", "a cat on a sofa", 640, 199, "basic_filter:image_too_small"),
    ("wide", "a very wide banner image", 1000, 300, "basic_filter:aspect_ratio"),
    ("tall", "a very tall poster image", 200, 601, "basic_filter:aspect_ratio"),
    ("small_and_wide", "a tiny wide strip image", 600, 100, "basic_filter:image_too_small"),
    ("earlier", "x", 10, 10, "download:http_404"),
]


def table(rows=ROWS) -> pa.Table:
    return pa.table(
        {
            "uid": pa.array([r[0] for r in rows], pa.string()),
            "caption": pa.array([r[1] for r in rows], pa.string()),
            "image": pa.array([b"jpeg" for _ in rows], pa.binary()),
            "width": pa.array([r[2] for r in rows], pa.int32()),
            "height": pa.array([r[3] for r in rows], pa.int32()),
            "reject": pa.array([r[4] if r[4] and r[4].startswith("download") else None for r in rows], pa.string()),
        }
    )


def test_datacomp_defaults_reject_each_rule_with_its_reason():
    out = BasicFilter()(table())
    got = dict(zip(out.column("uid").to_pylist(), out.column("reject").to_pylist()))
    assert got == {r[0]: r[4] for r in ROWS}
    assert out.column("uid").to_pylist() == [r[0] for r in ROWS]  # every row, in order
    images = dict(zip(out.column("uid").to_pylist(), out.column("image").to_pylist()))
    assert images["keep"] == b"jpeg" and images["small"] is None  # rejected rows drop image bytes


def test_thresholds_are_configurable():
    stage = BasicFilter(min_words=2, min_chars=1, min_image_side=100, max_aspect_ratio=4.0)
    out = stage(table())
    kept = set(out.filter(out.column("reject").is_null()).column("uid").to_pylist())
    assert {"two_words", "padded_two_words", "small", "wide"} <= kept
    assert "tall" in kept  # 601 / 200 < 4
    assert "small_and_wide" not in kept  # 600 / 100 > 4


def test_config_errors_name_the_key():
    with pytest.raises(pydantic.ValidationError, match="max_aspect_ratio"):
        BasicFilter(max_aspect_ratio=0.5)
    with pytest.raises(pydantic.ValidationError, match="min_word"):
        BasicFilter(min_word=3)


def test_batch_without_size_columns_is_judged_on_caption_only():
    out = BasicFilter()(table().drop_columns(["width", "height"]))
    got = dict(zip(out.column("uid").to_pylist(), out.column("reject").to_pylist()))
    assert got["small"] is None and got["wide"] is None and got["two_words"] == "basic_filter:too_few_words"


def test_original_size_wins_over_the_resized_one():
    """download resizes (e.g. to 128 px); DataComp judges the size as served."""
    batch = pa.table(
        {
            "uid": ["big_resized", "small_served", "unknown_original"],
            "caption": ["a red circle on white paper"] * 3,
            "width": pa.array([128, 128, 640], pa.int32()),
            "height": pa.array([128, 128, 480], pa.int32()),
            "original_width": pa.array([800, 150, None], pa.int32()),
            "original_height": pa.array([600, 150, None], pa.int32()),
        }
    )
    out = BasicFilter()(batch)
    assert out.column("reject").to_pylist() == [None, "basic_filter:image_too_small", None]
