"""Dedup stages against an earlier release (issue 16): every kind matches the new pool
against the release's kept rows too, and names the earlier uid."""

import numpy as np
import pyarrow as pa
import pytest

from clipcurate.dedup.exact import ExactDedup
from clipcurate.dedup.minhash import MinHashDedup
from clipcurate.dedup.perceptual import PerceptualDedup, image_hashes
from clipcurate.dedup.semantic import SemanticDedup, greedy_semdedup
from clipcurate.pipelines.release import RELEASE_UID_PREFIX


def uid(name: str) -> str:
    """``name`` as a uid of make_uid's form (a release's uids are checked when it is read),
    still readable in a failing assertion."""
    return name.encode().hex().ljust(32, "0")


def release_table(names, images=None, captions=None, **columns) -> pa.Table:
    n = len(names)
    table = {"uid": pa.array([uid(u) for u in names], pa.string()),
             "caption": pa.array(captions or [f"release caption {u}" for u in names], pa.string()),
             "image": pa.array(images or [None] * n, pa.binary())}
    return pa.table({**table, **columns})


def test_exact_names_the_release_uid_derives_once_and_caches(run_global, images, make_pool, reasons_of,
                                                             release_context, tmp_path):
    context = release_context(release_table(["r0", "r1", "r2"], [images.png(0), images.png(1), images.png(2)]))
    pool = make_pool(
        ["n_copy", uid("r1"), "n_new", "n_new2", "n_other"],  # "r1": the same url + caption re-crawled (same uid)
        images=[images.png(0), images.png(1), images.png(50), images.png(50), images.png(51)],
        scores=[0.9, 0.9, 0.2, 0.1, 0.5],  # a higher score never lets a new row replace a release row
    )
    stage = ExactDedup()
    stage.context = context
    out = run_global(stage, pool)
    assert reasons_of(out) == {
        "n_copy": f"dedup_exact:duplicate_of_release={uid('r0')}",
        uid("r1"): f"dedup_exact:duplicate_of_release={uid('r1')}",
        "n_new": None,
        "n_new2": "dedup_exact:duplicate_of=n_new",
        "n_other": None,
    }
    assert stage.summary()["duplicates_of_release"] == {context.releases[0].location: 2}
    assert stage.stats()["duplicates"].to_pylist() == [  # release: index of the --against release
        {"uid": uid("r1"), "duplicate_of": uid("r1"), "release": 0},
        {"uid": "n_copy", "duplicate_of": uid("r0"), "release": 0},
        {"uid": "n_new2", "duplicate_of": "n_new", "release": None},
    ]

    # the release's shards held no pixel hashes: derived once, cached outside the release
    cached = sorted((tmp_path / "cache").rglob("*.parquet"))
    assert len(cached) == 1 and not (tmp_path / "release" / "_work").exists()
    stamp = cached[0].stat().st_mtime_ns
    again = ExactDedup()
    again.context = context
    assert reasons_of(run_global(again, pool)) == reasons_of(out)
    assert cached[0].stat().st_mtime_ns == stamp


def test_perceptual_reads_stored_hashes_and_catches_reencodes(run_global, images, make_pool, reasons_of,
                                                              release_context, tmp_path):
    pictures = [images.png(s) for s in (10, 11, 12)]
    hashes = [image_hashes(p, ("phash", "dhash")) for p in pictures]
    context = release_context(release_table(
        ["r10", "r11", "r12"], pictures,
        phash=pa.array([h[0] for h in hashes], pa.uint64()), dhash=pa.array([h[1] for h in hashes], pa.uint64())))
    pool = make_pool(["n_jpeg", "n_resized", "n_new"],
                     images=[images.jpeg(10, 90), images.resized(11, 48), images.png(60)])
    stage = PerceptualDedup()
    stage.context = context
    out = run_global(stage, pool)
    assert reasons_of(out) == {"n_jpeg": f"dedup_perceptual:duplicate_of_release={uid('r10')}",
                               "n_resized": f"dedup_perceptual:duplicate_of_release={uid('r11')}", "n_new": None}
    assert not (tmp_path / "cache").exists()  # stored pHash/dHash were used as they are


def test_minhash_pairs_against_release(run_global, images, make_pool, reasons_of, release_context):
    caption = "a red bicycle leaning on a wall in the old town square at noon"
    template = "buy cozy cotton t-shirt online with free shipping today"
    context = release_context(release_table(["r_bike", "r_shirt"], [images.png(20), images.png(21)],
                                            [caption, template]))
    pool = make_pool(
        ["n_repost", "n_template", "n_new"],
        images=[images.jpeg(20, 90), images.png(70), images.png(71)],
        captions=[caption.replace("noon", "dawn"), template, "a green kayak on a calm lake"],
    )
    stage = MinHashDedup()  # match: pair
    stage.context = context
    out = run_global(stage, pool)
    assert reasons_of(out) == {
        "n_repost": f"dedup_minhash:duplicate_of_release={uid('r_bike')}",  # caption Jaccard 12/14, image re-encoded
        "n_template": None,  # the same caption on another picture is another pair
        "n_new": None,
    }


def test_semantic_keeps_release_points_and_names_them(run_global, make_pool, reasons_of, release_context):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 32))
    base /= np.linalg.norm(base, axis=1, keepdims=True)

    def near(v, scale=0.03):
        w = v + rng.normal(size=v.shape) * scale
        return w / np.linalg.norm(w)

    # release points r_a, r_a2 (near each other: both published, both stay), r_b
    release_emb = np.stack([base[0], near(base[0], 0.02), base[1]]).astype(np.float16)
    emb_column = pa.FixedSizeListArray.from_arrays(pa.array(release_emb.reshape(-1)), 32)
    context = release_context(release_table(["r_a", "r_a2", "r_b"], clip_image_emb=emb_column))
    pool_emb = np.stack([near(base[1]), base[2], near(base[2]), base[3]])
    pool = make_pool(["n_b", "n_c", "n_c2", "n_d"], embeddings=pool_emb, scores=[0.9, 0.8, 0.1, 0.5])
    stage = SemanticDedup(eps=0.05, num_clusters=1)
    stage.context = context
    out = run_global(stage, pool)
    assert reasons_of(out) == {"n_b": f"dedup_semantic:duplicate_of_release={uid('r_b')}", "n_c": None,
                               "n_c2": "dedup_semantic:duplicate_of=n_c", "n_d": None}


def test_greedy_walk_never_removes_pinned_points():
    points = np.array([[1.0, 0.0], [0.999, 0.0447], [0.998, 0.0632], [0.0, 1.0]])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    pinned = np.array([True, True, False, False])
    removed, kept_by = greedy_semdedup(points, 0.99, pinned=pinned)
    assert removed.tolist() == [False, False, True, False]
    assert kept_by[2] == 1  # the most similar release point, not the first one
    plain, _ = greedy_semdedup(points, 0.99)
    assert plain.tolist() == [False, True, True, False]


def test_semantic_refuses_a_release_without_embeddings(run_global, make_pool, release_context):
    from clipcurate.pipelines.errors import UserError

    stage = SemanticDedup()
    stage.context = release_context(release_table(["r0"]))
    pool = make_pool(["n0", "n1"], embeddings=np.eye(2, 8))
    with pytest.raises(UserError, match="no clip_image_emb"):
        run_global(stage, pool)


def test_semantic_refuses_a_release_embedded_by_another_model(run_global, make_pool, release_context):
    """Both columns name their model (field metadata, as clip_score writes it): another
    model's release is refused; the same model under another spelling is matched."""
    from clipcurate.pipelines.errors import UserError
    from clipcurate.train.embedding_columns import MODEL_KEY

    def named(table: pa.Table, model: str) -> pa.Table:
        at = table.schema.get_field_index("clip_image_emb")
        field = table.schema.field(at).with_metadata({MODEL_KEY: model.encode()})
        return table.set_column(at, field, table.column(at))

    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.eye(2, 8, dtype=np.float16).reshape(-1)), 8)
    pool = named(make_pool(["n0", "n1"], embeddings=np.eye(2, 8)), "ViT-B-32|openai|aaaa")
    stage = SemanticDedup(num_clusters=1)
    stage.context = release_context(named(release_table(["r0", "r1"], clip_image_emb=emb), "ViT-L-14|openai|bbbb"))
    with pytest.raises(UserError, match="another model"):
        run_global(stage, pool)
    stage = SemanticDedup(num_clusters=1)
    stage.context = release_context(named(release_table(["r0", "r1"], clip_image_emb=emb), "local-dir:/x|None|aaaa"),
                                    name="same")
    out = run_global(stage, pool)
    assert out.column("reject").to_pylist() == [f"dedup_semantic:duplicate_of_release={uid('r0')}",
                                                f"dedup_semantic:duplicate_of_release={uid('r1')}"]


def test_release_uids_never_leak_into_the_lookup(run_global, images, make_pool, release_context):
    # two identical release rows (the release was not deduped): grouped, yet only new rows are duplicates
    context = release_context(release_table(["r0", "r0b"], [images.png(5), images.png(5)]))
    stage = ExactDedup()
    stage.context = context
    run_global(stage, make_pool(["n0"], images=[images.png(5)]))
    uids = stage.stats()["duplicates"].column("uid").to_pylist()
    assert uids == ["n0"] and not any(u.startswith(RELEASE_UID_PREFIX) for u in uids)
