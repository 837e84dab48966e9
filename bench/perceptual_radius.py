"""Perceptual dedup radius, measured on real photographs with known duplicates.

``dedup_perceptual`` merges images whose 64-bit pHash (optionally also dHash) lies
within a Hamming radius. This bench sweeps the radius 0..10 on a labelled set and
reports pair precision and recall for pHash alone and for pHash + dHash (both within
the radius), then picks the largest pHash radius with pair precision >= 0.99.

The labelled set, all offline:

* originals: square windows of real photos (two scales, stride half a window, so
  neighbouring windows share half their area), resized to 256 px as the download stage
  does: scikit-image's bundled photos (astronaut, camera, chelsea, coffee, coins, ...),
  its textures (brick, grass, gravel), the nature photos of Debian's
  ``mate-backgrounds`` and ``lomiri-wallpapers-20.04`` when installed; plus
  Fashion-MNIST test items (Debian ``dataset-fashion-mnist``), inverted to dark-on-white
  and upscaled to 112 px, as "near-identical product photos" of one class.
* positives (true duplicates): every pair inside one original's group, made of the
  original and its JPEG re-encodes (q 90/70/50/30), a WebP, resizes down and up, a
  thumbnail JPEG, crops of 2 % and 5 % split unevenly between the sides, and +-8 %
  brightness.
* negatives: every pair from two different originals; the hard ones are other windows
  of the same photo (overlapping or apart), other photos of the same kind, products of
  one class, the left and right views of a stereo pair, and mirror images. A mirror
  counts as a distinct image: it reverses any text and the left/right a caption may
  name, and its hashes are far from the original's anyway (about half the bits).

Run: ``.venv/bin/python bench/perceptual_radius.py [--fashion-per-class 30]``. Prints the
sweep table, then one JSON line: ``default`` (the stage's default, pHash and dHash within
4, with its precision and recall), ``precision`` and ``recall`` at the pHash-only radius
the rule chooses, and the whole sweep.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

# run as a script, bench/ must not shadow the ``dedup`` package (see bench/dedup.py)
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import numpy as np
import pyarrow as pa
from PIL import Image, ImageEnhance

from clipcurate.dedup.perceptual import DEFAULT_HASHES, DEFAULT_MAX_DISTANCE, PerceptualDedup, hamming, image_hashes

SIZE = 256
RADII = range(0, 11)
MIN_PRECISION = 0.99
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "page", "rocket", "clock", "text",
                  "hubble_deep_field", "immunohistochemistry", "retina", "cell")
SKIMAGE_TEXTURES = ("brick", "grass", "gravel")
WALLPAPER_GLOBS = ("/usr/share/backgrounds/mate/nature/*.jpg", "/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


@dataclass
class Original:
    """One distinct image: where it came from, for labelling negative pairs."""

    image: Image.Image
    kind: str  # photo, texture, wallpaper, product
    source: str  # photo name or product class
    box: tuple[int, int, int, int] | None = None  # window in the source photo
    mirror_of: int | None = None  # index of the original this one mirrors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.35, 0.6],
                        help="window sides as fractions of the photo's shorter side")
    parser.add_argument("--fashion-per-class", type=int, default=30, help="Fashion-MNIST items per class (0: none)")
    parser.add_argument("--no-stage", action="store_true", help="skip running the stage's fit at the chosen radius")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes that encode and hash")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    originals, used = load_originals(args.scales, args.fashion_per_class, args.seed)
    with ProcessPoolExecutor(args.workers) as pool:
        jobs = [(index, original, args.seed) for index, original in enumerate(originals)]
        rows = [row for rows in pool.map(hash_images, jobs, chunksize=16) for row in rows]
    images = Images(
        group=np.array([r[0] for r in rows]),
        variant=np.array([r[1] for r in rows]),
        kind=np.array([originals[r[0]].kind for r in rows]),
        phash=np.array([r[2] for r in rows], dtype=np.uint64),
        dhash=np.array([r[3] for r in rows], dtype=np.uint64),
    )
    print(f"{len(originals)} originals, {len(rows)} images from {used} ({time.perf_counter() - t0:.0f} s to build and hash)")

    result = measure(originals, images)
    result["sources"] = used
    if not args.no_stage:
        result["stage_matches_all_pairs"] = stage_matches(images.phash, result["radius"])
    print(json.dumps(result))
    return 0


@dataclass
class Images:
    """One entry per encoded image: its original (group), variant name, kind, hashes."""

    group: np.ndarray
    variant: np.ndarray
    kind: np.ndarray
    phash: np.ndarray
    dhash: np.ndarray


def measure(originals: list[Original], images: Images) -> dict:
    """The sweep over RADII, the table, and the figures at the chosen radius."""
    group, variant, kind, phash = images.group, images.variant, images.kind, images.phash
    i, j, d_phash, d_dhash = near_pairs(phash, images.dhash, max(RADII))
    same = group[i] == group[j]
    pair_kind = np.where(kind[i] == kind[j], kind[i], "mixed")
    category = negative_category(originals, group[i], group[j])
    sizes = np.bincount(group)
    positives = int((sizes * (sizes - 1) // 2).sum())
    kinds = sorted(set(kind.tolist()))
    positives_of = {k: int((sizes[np.unique(group[kind == k])] * (sizes[np.unique(group[kind == k])] - 1) // 2).sum()) for k in kinds}
    is_variant = (variant[i] == "original") & same  # (original, variant) pairs: the original is first
    sweep = []
    for radius in RADII:
        row = {"radius": radius}
        for name, near in (("phash_dhash", (d_phash <= radius) & (d_dhash <= radius)), ("phash", d_phash <= radius)):
            row[name] = _precision_recall(near & same, near & ~same, positives)
            row[name]["by_kind"] = {
                k: _precision_recall(near & same & (pair_kind == k), near & ~same & (pair_kind == k), positives_of[k])
                for k in kinds
            }
        row["phash"]["recall_by_variant"] = {
            str(v): round(int((near & is_variant & (variant[j] == v)).sum()) / int((variant == v).sum()), 4)
            for v in np.unique(variant[(variant != "original") & (variant != "mirror")])
        }
        row["phash"]["fp_by_category"] = {str(k): int(c) for k, c in zip(*np.unique(category[near & ~same], return_counts=True))}
        row["phash"]["originals_lost"], row["phash"]["duplicates_left"] = group_outcome(group, i[near], j[near])
        sweep.append(row)
    print_table(sweep, positives, len(originals))

    best = choose(sweep, "phash")
    at = best["phash"]
    both = choose(sweep, "phash_dhash")
    mirror_of = np.array([o.mirror_of for o in originals if o.mirror_of is not None])
    first_image = np.searchsorted(group, np.arange(len(originals)))  # a group's first image is its original
    mirror_distance = hamming(phash[first_image[mirror_of]], phash[variant == "mirror"]) if len(mirror_of) else np.array([0])
    print(f"\nchosen radius {best['radius']} (pHash pair precision >= {MIN_PRECISION} overall and on every kind, "
          f"best recall): precision {at['precision']}, recall {at['recall']}")
    print(f"pHash + dHash by the same rule: radius {both['radius']}, precision {both['phash_dhash']['precision']}, "
          f"recall {both['phash_dhash']['recall']}")
    print("recall of original -> variant:", json.dumps(at["recall_by_variant"]))
    print(f"mirror vs original pHash distance: median {np.median(mirror_distance):.0f}, min {mirror_distance.min()}")
    default = next(r for r in sweep if r["radius"] == DEFAULT_MAX_DISTANCE)["phash_dhash"]
    print(f"the stage default (pHash and dHash within {DEFAULT_MAX_DISTANCE}): precision {default['precision']}, "
          f"recall {default['recall']}")
    return {
        "default": {"hashes": list(DEFAULT_HASHES), "max_distance": DEFAULT_MAX_DISTANCE,
                    "precision": default["precision"], "recall": default["recall"],
                    "precision_by_kind": {k: v["precision"] for k, v in default["by_kind"].items()}},
        "radius": best["radius"],
        "precision": at["precision"],
        "recall": at["recall"],
        "by_kind": at["by_kind"],
        "recall_by_variant": at["recall_by_variant"],
        "phash_dhash": {"radius": both["radius"], "precision": both["phash_dhash"]["precision"],
                        "recall": both["phash_dhash"]["recall"]},
        "mirror_distance_median": float(np.median(mirror_distance)),
        "originals": len(originals),
        "images": len(group),
        "positive_pairs": positives,
        "sweep": sweep,
    }


def choose(sweep: list[dict], name: str) -> dict:
    """The sweep row with the best recall among those with pair precision >= 0.99 both
    overall and on every kind of image (a pool of look-alike products must not pay for
    easy photos); ties go to the smaller radius. pHash sets exactly 32 of its 64 bits
    (those above the median), so its distances are even and an odd radius acts as the
    even one below it."""
    passing = [r for r in sweep if r[name]["precision"] >= MIN_PRECISION
               and all(k["precision"] >= MIN_PRECISION for k in r[name]["by_kind"].values())]
    return max(passing, key=lambda r: (r[name]["recall"], -r["radius"])) if passing else sweep[0]


def _precision_recall(tp_mask: np.ndarray, fp_mask: np.ndarray, positives: int) -> dict:
    tp, fp = int(tp_mask.sum()), int(fp_mask.sum())
    return {"tp": tp, "fp": fp, "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
            "recall": round(tp / positives, 4) if positives else 1.0}


# ------------------------------------------------------------------------ the set


def load_originals(scales, fashion_per_class: int, seed: int) -> tuple[list[Original], dict[str, int]]:
    """Windows of every photo that loads offline, plus Fashion-MNIST items."""
    import skimage.data

    originals: list[Original] = []
    used: dict[str, int] = {}

    def add(name: str, pixels: np.ndarray, kind: str) -> None:
        before = len(originals)
        originals.extend(windows(Image.fromarray(pixels), kind, name, scales))
        used[name] = len(originals) - before

    for name in SKIMAGE_PHOTOS + SKIMAGE_TEXTURES:
        add(name, getattr(skimage.data, name)(), "texture" if name in SKIMAGE_TEXTURES else "photo")
    left, right, _ = skimage.data.stereo_motorcycle()
    add("motorcycle_left", left, "photo")
    add("motorcycle_right", right, "photo")
    for path in sorted(p for pattern in WALLPAPER_GLOBS for p in glob.glob(pattern)):
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 2, image.height // 2))  # JPEG: decode at half size
            image = image.convert("RGB")
            image.thumbnail((1600, 1600))
            add(os.path.splitext(os.path.basename(path))[0], np.asarray(image), "wallpaper")
    mirrors = [Original(o.image.transpose(Image.FLIP_LEFT_RIGHT), o.kind, o.source, o.box, k)
               for k, o in enumerate(originals)]
    if fashion_per_class and os.path.isdir(FASHION_MNIST_DIR):
        products = fashion_items(fashion_per_class, seed)
        originals.extend(products)
        used["fashion-mnist"] = len(products)
    return originals + mirrors, used


def windows(photo: Image.Image, kind: str, source: str, scales) -> list[Original]:
    """Square windows at each scale on a grid with a stride of half a window."""
    out = []
    for scale in scales:
        side = int(scale * min(photo.size))
        if side < 96:
            continue
        xs = np.linspace(0, photo.width - side, max(1, int((photo.width - side) / (side / 2)) + 1)).astype(int)
        ys = np.linspace(0, photo.height - side, max(1, int((photo.height - side) / (side / 2)) + 1)).astype(int)
        for y in ys:
            for x in xs:
                box = (int(x), int(y), int(x) + side, int(y) + side)
                out.append(Original(photo.crop(box).resize((SIZE, SIZE), Image.BICUBIC), kind, source, box))
    return out


def fashion_items(per_class: int, seed: int) -> list[Original]:
    """Fashion-MNIST test items, dark on white at 112 px; items whose pixels are
    near-identical to one already taken (the set has some) are skipped, so every
    negative pair is two different products."""
    from clipcurate.train.datasets import fashion_mnist

    images, labels = fashion_mnist("test", root=FASHION_MNIST_DIR)
    order = np.random.default_rng(seed).permutation(len(labels))
    out = []
    for label, name in enumerate(FASHION_CLASSES):
        taken: list[np.ndarray] = []
        for index in order[labels[order] == label]:
            pixels = images[index].astype(np.int16)
            if any(np.abs(pixels - t).mean() < 4 for t in taken):
                continue
            taken.append(pixels)
            image = Image.fromarray((255 - images[index]).astype(np.uint8)).resize((112, 112), Image.BICUBIC)
            out.append(Original(image, "product", name))
            if len(taken) == per_class:
                break
    return out


def hash_images(job: tuple[int, Original, int]) -> list[tuple[int, str, int, int]]:
    """(original index, variant name, pHash, dHash) of each encoded image of one
    original: itself and its duplicate variants, or a mirror alone (its own group).
    Hashes come from the stage's own function, on the encoded bytes."""
    index, original, seed = job
    if original.mirror_of is not None:
        images = [("mirror", encode(original.image, "PNG"))]
    else:
        images = variants(original.image, np.random.default_rng([seed, index]))
    return [(index, name, *image_hashes(data, ("phash", "dhash"))) for name, data in images]


def variants(image: Image.Image, rng: np.random.Generator):
    """The original and the copies a crawl meets: re-encodes, resizes, crops, brightness."""
    side = image.width
    yield "original", encode(image, "PNG")
    for quality in (90, 70, 50, 30):
        yield f"jpeg_q{quality}", encode(image, "JPEG", quality=quality)
    yield "webp_q80", encode(image, "WEBP", quality=80)
    yield "resize_half", encode(image.resize((side // 2, side // 2), Image.LANCZOS), "PNG")
    yield "resize_double", encode(image.resize((side * 2, side * 2), Image.LANCZOS), "PNG")
    yield "thumb_jpeg75", encode(image.resize((side * 3 // 8, side * 3 // 8), Image.LANCZOS), "JPEG", quality=75)
    for percent in (2, 5):
        cut = side * percent / 100
        left, top = rng.uniform(0, cut, 2)
        box = (round(left), round(top), round(side - (cut - left)), round(side - (cut - top)))
        yield f"crop_{percent}pct", encode(image.crop(box), "PNG")
    yield "brighter_8pct", encode(ImageEnhance.Brightness(image).enhance(1.08), "PNG")
    yield "darker_8pct", encode(ImageEnhance.Brightness(image).enhance(0.92), "PNG")


def encode(image: Image.Image, fmt: str, **save) -> bytes:
    """Encoded bytes; PNG at zlib level 1 (same pixels, several times faster)."""
    buffer = io.BytesIO()
    if fmt == "PNG":
        save.setdefault("compress_level", 1)
    (image.convert("RGB") if fmt in ("JPEG", "WEBP") and image.mode not in ("RGB", "L") else image).save(buffer, fmt, **save)
    return buffer.getvalue()


# ---------------------------------------------------------------------- measuring


def near_pairs(phash: np.ndarray, dhash: np.ndarray, radius: int, chunk: int = 512):
    """All pairs (i < j) with pHash distance <= radius, with both distances."""
    out = []
    for start in range(0, len(phash), chunk):
        distance = hamming(phash[start : start + chunk, None], phash[None, :])
        a, b = np.nonzero(distance <= radius)
        a += start
        keep = a < b
        out.append((a[keep], b[keep]))
    i = np.concatenate([a for a, _ in out]).astype(np.int64)
    j = np.concatenate([b for _, b in out]).astype(np.int64)
    return i, j, hamming(phash[i], phash[j]), hamming(dhash[i], dhash[j])


def negative_category(originals: list[Original], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What two different originals have in common (for the false positives table)."""
    out = np.full(len(a), "", dtype=object)
    for k, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        if x == y:
            continue
        p, q = originals[x], originals[y]
        if p.mirror_of == y or q.mirror_of == x:
            out[k] = "mirror"
        elif p.kind == "product":
            out[k] = "product_same_class" if p.source == q.source else "product"
        elif p.source == q.source:
            out[k] = "same_photo_overlap" if _overlap(p.box, q.box) else "same_photo_apart"
        elif {p.source, q.source} == {"motorcycle_left", "motorcycle_right"}:
            out[k] = "stereo_view"
        elif p.kind == q.kind:
            out[k] = f"same_kind_{p.kind}"
        else:
            out[k] = "other"
    return out


def group_outcome(group: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[int, int]:
    """What union-find over the near pairs and one survivor per component (smallest
    index, as the stage's smallest uid) do to the set: originals with no image left,
    and images left beyond one per original."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(group)
    _, component = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    first = np.full(component.max() + 1, n)
    np.minimum.at(first, component, np.arange(n))
    kept_groups = group[first]
    originals = len(np.unique(group))
    present = len(np.unique(kept_groups))
    return originals - present, len(kept_groups) - present


def stage_matches(phash: np.ndarray, radius: int) -> dict:
    """Does the stage's fit (pigeonhole banding on Ray, each bucket member checked against
    a few representatives) remove the images that all-pairs union-find removes at the
    same radius? Counts of both and of their overlap."""
    import ray
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    uids = [f"p{k:06d}" for k in range(len(phash))]
    table = pa.table({"uid": uids, "phash": pa.array(phash, pa.uint64()), "reject": pa.nulls(len(uids), pa.string())})
    stage = PerceptualDedup(hashes=("phash",), max_distance=radius)  # the radius the sweep chose, pHash alone
    stage.fit(ray.data.from_arrow(table).repartition(8))
    removed = set(stage.stats()["duplicates"].column("uid").to_pylist())
    ray.shutdown()
    n = len(phash)
    i, j, _, _ = near_pairs(phash, phash, radius)
    _, component = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    order = np.lexsort((np.arange(n), component))
    not_first = np.zeros(n, dtype=bool)
    not_first[order[1:]] = component[order][1:] == component[order][:-1]
    expected = {uids[k] for k in np.flatnonzero(not_first)}
    return {"equal": removed == expected, "stage_removed": len(removed), "all_pairs_removed": len(expected),
            "both": len(removed & expected)}


def print_table(sweep: list[dict], positives: int, originals: int) -> None:
    kinds = list(sweep[0]["phash"]["by_kind"])
    print(f"\n{positives} positive pairs; {originals} originals; lost: originals with no image left after "
          f"union-find and the keep rule; left: duplicates kept beyond one per original")
    print(f"{'radius':>6} | {'pHash prec':>10} {'recall':>7} {'FP':>6} {'lost':>5} {'left':>5} | "
          + " ".join(f"{k[:9]:>9}" for k in kinds)
          + f" | {'+dHash prec':>11} {'recall':>7} {'worst kind':>10} | false positives by category (pHash)")
    for row in sweep:
        p, b = row["phash"], row["phash_dhash"]
        categories = ", ".join(f"{k} {v}" for k, v in sorted(p["fp_by_category"].items(), key=lambda kv: -kv[1]))
        print(f"{row['radius']:>6} | {p['precision']:>10.4f} {p['recall']:>7.4f} {p['fp']:>6} "
              f"{p['originals_lost']:>5} {p['duplicates_left']:>5} | "
              + " ".join(f"{p['by_kind'][k]['precision']:>9.4f}" for k in kinds)
              + f" | {b['precision']:>11.4f} {b['recall']:>7.4f} {min(k['precision'] for k in b['by_kind'].values()):>10.4f}"
              + f" | {categories}")


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


if __name__ == "__main__":
    raise SystemExit(main())
