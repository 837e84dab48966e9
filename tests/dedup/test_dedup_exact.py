import numpy as np

from clipcurate.dedup.exact import ExactDedup


def test_same_pixels_in_other_containers_are_duplicates(run_global, make_pool, images, reasons_of):
    pixels = images.array(1)
    table = make_pool(
        ["a", "b", "c", "d", "e", "f"],
        images=[
            images.encode(pixels, "PNG"),
            images.encode(pixels, "BMP"),  # same pixels, other bytes
            images.encode(pixels, "PNG"),  # byte-identical copy
            images.jpeg(1, 60),  # lossy: pixels differ, perceptual's job
            images.png(2),
            images.png(2),
        ],
        scores=[0.1, 0.3, 0.2, 0.9, 0.5, 0.5],
    )
    out = run_global(ExactDedup(), table)
    assert reasons_of(out) == {
        "a": "dedup_exact:duplicate_of=b",  # highest clip_score survives
        "b": None,
        "c": "dedup_exact:duplicate_of=b",
        "d": None,
        "e": None,  # tie on clip_score: smallest uid survives
        "f": "dedup_exact:duplicate_of=e",
    }
    sha = out.column("image_sha256").to_pylist()
    assert sha[0] == sha[2] != sha[1]
    assert out.column("image").null_count == 3  # rejected rows lose their bytes


def test_bytes_key_and_already_rejected_rows(run_global, make_pool, images, reasons_of):
    pixels = images.array(3)
    table = make_pool(
        ["a", "b", "c", "d"],
        images=[images.encode(pixels, "BMP"), images.encode(pixels, "PNG"), images.encode(pixels, "PNG"), images.encode(pixels, "PNG")],
        reject=["basic_filter:too_small", None, None, None],
    )
    out = run_global(ExactDedup(key="bytes"), table)
    assert reasons_of(out) == {
        "a": "basic_filter:too_small",
        "b": None,
        "c": "dedup_exact:duplicate_of=b",
        "d": "dedup_exact:duplicate_of=b",
    }
    assert out.column("pixel_hash").null_count == 4


def test_partitioning_does_not_change_kept_set(run_global, make_pool, images):
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 40, 120)
    table = make_pool([f"u{i:03d}" for i in range(120)], images=[images.png(int(s)) for s in seeds],
                      scores=rng.random(120).round(1))
    one = run_global(ExactDedup(), table, 1).column("reject").to_pylist()
    eight = run_global(ExactDedup(), table, 8).column("reject").to_pylist()
    assert one == eight
    assert sum(r is None for r in one) == len(set(seeds.tolist()))
