import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.dedup.decontaminate import Decontaminate


@pytest.fixture
def eval_set(tmp_path, images, make_pool):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = make_pool(
        ["ev0", "ev1", "ev2"],
        images=[images.png(100), images.png(101), images.png(102)],
        captions=["a golden retriever puppy playing in fresh snow", "red sports car", "a bowl of ramen"],
        embeddings=emb,
    ).drop_columns(["reject"])
    path = tmp_path / "eval.parquet"
    pq.write_table(table, path)
    return path, emb


def test_near_eval_items_are_rejected(eval_set, images, make_pool, reasons_of):
    path, eval_emb = eval_set
    rng = np.random.default_rng(1)
    other = rng.normal(size=(6, 16))
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    semantic = eval_emb[2] + rng.normal(size=16) * 0.02
    other[2] = semantic / np.linalg.norm(semantic)
    pool = make_pool(
        ["p_reencode", "p_resize", "p_semantic", "p_caption", "p_clean", "p_rejected"],
        images=[images.jpeg(101, 40), images.resized(100, 40), images.png(200), images.png(201), images.png(202), images.jpeg(101, 40)],
        captions=["car", "dog", "food", "A golden retriever puppy playing in the fresh snow", "a cat", "car"],
        embeddings=other,
        reject=[None, None, None, None, None, "basic_filter:too_small"],
    )
    stage = Decontaminate(eval_path=str(path), caption_threshold=0.8)
    out = stage(pool)
    assert reasons_of(out) == {
        "p_reencode": "decontaminate:near_eval=ev1",
        "p_resize": "decontaminate:near_eval=ev0",
        "p_semantic": "decontaminate:near_eval=ev2",
        "p_caption": "decontaminate:near_eval=ev0",
        "p_clean": None,
        "p_rejected": "basic_filter:too_small",
    }
    assert out.column("image").is_null().to_pylist() == [True, True, True, True, False, False]


def test_captions_ignored_unless_asked_and_index_ids(tmp_path, images, make_pool, reasons_of):
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"image": [images.png(300)], "caption": ["a cat"]}), path)
    pool = make_pool(["x", "y"], images=[images.png(301), images.jpeg(300, 50)], captions=["a cat", "zzz"])
    out = Decontaminate(eval_path=str(path))(pool)
    assert reasons_of(out) == {"x": None, "y": "decontaminate:near_eval=0"}


def test_eval_without_usable_columns_is_an_error(tmp_path):
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"label": [1, 2]}), path)
    with pytest.raises(ValueError, match="eval_path"):
        Decontaminate(eval_path=str(path)).setup()
