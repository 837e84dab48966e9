import numpy as np
import pyarrow as pa
import pytest

from clipcurate.dedup.perceptual import PerceptualDedup, _band_layout, hamming


def test_reencodes_resizes_and_crops_are_grouped(run_global, make_pool, images, reasons_of):
    table = make_pool(
        ["orig", "jpeg30", "jpeg90", "half", "double", "crop", "other1", "other2"],
        images=[
            images.png(7),
            images.jpeg(7, 30),
            images.jpeg(7, 90),
            images.resized(7, 32),
            images.resized(7, 128),
            images.cropped(7, 2),
            images.png(8),
            images.png(9),
        ],
        scores=[0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9],
    )
    out = run_global(PerceptualDedup(hashes=("phash",), max_distance=6), table)
    got = reasons_of(out)
    assert got["orig"] is None and got["other1"] is None and got["other2"] is None
    for uid in ("jpeg30", "jpeg90", "half", "double", "crop"):
        assert got[uid] == "dedup_perceptual:duplicate_of=orig", uid
    assert out.schema.field("phash").type == pa.uint64()
    assert out.column("dhash").null_count == 8


def test_dhash_and_both_hashes_must_agree(run_global, make_pool, images, reasons_of):
    table = make_pool(["a", "b", "c"], images=[images.png(11), images.jpeg(11, 50), images.png(12)])
    out = run_global(PerceptualDedup(hashes=("phash", "dhash"), max_distance=8), table)
    assert reasons_of(out) == {"a": None, "b": "dedup_perceptual:duplicate_of=a", "c": None}
    assert out.column("dhash").null_count == 0


def test_bucketing_finds_every_pair_within_radius(ray_local):
    """Pigeonhole banding is exact: compare with all-pairs Hamming on planted hashes."""
    rng = np.random.default_rng(5)
    radius = 5
    base = rng.integers(0, 2**63, 150, dtype=np.int64).astype(np.uint64)
    near = base.copy()
    for i in range(len(near)):  # flip exactly `radius` bits (the hardest case)
        for bit in rng.choice(64, radius, replace=False):
            near[i] ^= np.uint64(1) << np.uint64(bit)
    hashes = np.concatenate([base, near])
    uids = [f"u{i:04d}" for i in range(len(hashes))]
    table = pa.table({"uid": uids, "phash": pa.array(hashes, pa.uint64()), "reject": pa.nulls(len(uids), pa.string())})
    stage = PerceptualDedup(hashes=("phash",), max_distance=radius)
    stage.fit(ray_local.data.from_arrow(table).repartition(4))
    removed = set(stage.stats()["duplicates"].column("uid").to_pylist())
    distance = hamming(hashes[:, None], hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= radius, 1))
    assert len(i) >= 150
    for a, b in zip(i, j):  # every near pair lost exactly one member (groups are pairs here)
        assert (uids[a] in removed) != (uids[b] in removed)


@pytest.mark.parametrize("radius", [0, 3, 6, 10])
def test_band_layout_covers_64_bits(radius):
    layout = _band_layout(radius)
    assert len(layout) == radius + 1
    assert sum(width for _, width in layout) == 64
    assert [shift for shift, _ in layout] == sorted({shift for shift, _ in layout})


def test_partitioning_does_not_change_kept_set(run_global, make_pool, images):
    seeds = [i % 15 for i in range(60)]
    variants = [images.png(s) if i < 15 else images.jpeg(s, 40 + i) for i, s in enumerate(seeds)]
    table = make_pool([f"u{i:03d}" for i in range(60)], images=variants, scores=[(i * 7 % 10) / 10 for i in range(60)])
    one = run_global(PerceptualDedup(), table, 1).column("reject").to_pylist()
    eight = run_global(PerceptualDedup(), table, 8).column("reject").to_pylist()
    assert one == eight
    assert sum(r is None for r in one) == 15


def test_default_radius_on_real_photos(run_global, make_pool, images, reasons_of):
    """The measured default (bench/perceptual_radius.py) on scikit-image's bundled photos:
    re-encodes and resizes of a window are one image; the window half a window over and
    the mirror image are other images."""
    import skimage.data
    from PIL import Image

    uids, data = [], []
    for name in ("astronaut", "coffee", "chelsea"):
        photo = Image.fromarray(getattr(skimage.data, name)())
        window = np.asarray(photo.crop((0, 0, 256, 256)))
        variants = {
            "png": images.encode(window),
            "jpeg50": images.encode(window, "JPEG", quality=50),
            "webp": images.encode(window, "WEBP", quality=80),
            "half": images.encode(np.asarray(Image.fromarray(window).resize((128, 128), Image.LANCZOS))),
            "shifted": images.encode(np.asarray(photo.crop((128, 0, 384, 256)))),
            "mirror": images.encode(window[:, ::-1].copy()),
        }
        uids += [f"{name}_{v}" for v in variants]
        data += list(variants.values())
    stage = PerceptualDedup()
    assert stage.config.max_distance == 4 and stage.config.hashes == ("phash", "dhash")
    scores = [1.0 if uid.endswith("_png") else 0.5 for uid in uids]
    got = reasons_of(run_global(stage, make_pool(uids, images=data, scores=scores)))
    for name in ("astronaut", "coffee", "chelsea"):
        for v in ("jpeg50", "webp", "half"):
            assert got[f"{name}_{v}"] == f"dedup_perceptual:duplicate_of={name}_png", (name, v)
        assert got[f"{name}_png"] is None and got[f"{name}_shifted"] is None and got[f"{name}_mirror"] is None


def test_look_alike_products_are_kept_at_the_default_radius(run_global, make_pool, images, reasons_of):
    """Two different Fashion-MNIST sneakers whose pHashes are 4 bits apart: pHash alone at
    radius 4 (and the former default, 6) merges them; the default keeps them, because
    their dHashes differ more (a JPEG re-encode of one is still its duplicate)."""
    from PIL import Image

    from clipcurate.train.datasets import FASHION_MNIST_DIR, fashion_mnist

    try:
        items, labels = fashion_mnist("test", root=FASHION_MNIST_DIR)
    except Exception as err:  # the Debian package dataset-fashion-mnist (make sysdeps)
        pytest.skip(str(err))
    a, b = (np.asarray(Image.fromarray(255 - items[i]).resize((112, 112), Image.BICUBIC)) for i in (93, 2011))
    assert labels[93] == labels[2011] == 7 and np.abs(items[93].astype(int) - items[2011]).mean() > 30
    table = make_pool(["a", "a_jpeg", "b"], images=[images.encode(a), images.encode(a, "JPEG", quality=75), images.encode(b)])
    assert hamming(*(np.uint64(h) for h in PerceptualDedup().prepare(table).column("phash").to_pylist()[::2])) == 4
    assert reasons_of(run_global(PerceptualDedup(), table)) == {"a": None, "a_jpeg": "dedup_perceptual:duplicate_of=a", "b": None}
    assert reasons_of(run_global(PerceptualDedup(hashes=("phash",), max_distance=4), table))["b"] == \
        "dedup_perceptual:duplicate_of=a"
