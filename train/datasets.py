"""Small real and synthetic image-text data, written in the formats the trainer reads.

- shards: a run's ``OUT/shards/part-NNNNN.parquet`` layout (uid, url, caption, image
  binary, width, height, reject), so the trainer reads them like curated output;
- a labeled eval parquet: ``image`` (encoded), ``label`` (class name), ``caption``.

Captions come in two kinds: ``fashion_mnist_captions`` writes prompt-like sentences
("a photo of a sneaker."), ``alt_text_captions`` writes what a shop's ``alt`` attribute
says ("slim sneaker, item #3515", "IMG_2263 T-shirt"): the realistic kind for trusted
pairs and web-like pools.

Sources, all offline: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (IDX files),
scikit-image's bundled CC0 sample photos, and generated coloured shapes whose captions
describe them ("a red circle").
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.stage import make_uid

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Class names from the dataset's README (Xiao et al. 2017), in label order.
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot")
CAPTION_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "a black and white photo of a {}.",
                     "a small photo of the {}.", "an image of a {}.", "a low resolution photo of a {}.",
                     "a product photo of a {}.")
SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 215, 20)}
SHAPES = ("circle", "square", "triangle")
# Web alt-text for Fashion-MNIST products: what shops and blogs call each class, in label order.
ALT_TEXT_NOUNS = (
    ("t-shirt", "T-shirt", "tee", "crew neck tee", "graphic tee", "short sleeve top"),
    ("trousers", "pants", "jeans", "chinos", "slacks", "joggers"),
    ("pullover", "sweater", "jumper", "knit sweater", "sweatshirt", "hoodie"),
    ("dress", "maxi dress", "summer dress", "midi dress", "shift dress", "party dress"),
    ("coat", "jacket", "parka", "overcoat", "trench coat", "winter coat"),
    ("sandals", "sandal", "flip flops", "slides", "strappy sandals", "beach sandals"),
    ("shirt", "button-down shirt", "blouse", "flannel shirt", "oxford shirt", "long sleeve shirt"),
    ("sneakers", "sneaker", "trainers", "running shoes", "canvas shoes", "sport shoes"),
    ("bag", "handbag", "tote bag", "purse", "shoulder bag", "backpack"),
    ("ankle boots", "ankle boot", "boots", "chelsea boots", "booties", "leather boots"),
)
ALT_TEXT_ADJECTIVES = ("slim", "cozy", "classic", "vintage", "casual", "black", "white", "grey", "navy",
                       "lightweight", "organic cotton", "oversized", "new", "basic", "premium", "soft")
ALT_TEXT_WHO = ("women's", "men's", "kids'", "unisex", "ladies", "girls'", "boys'")
ALT_TEXT_BRANDS = ("Northwind", "Acme", "Lumen", "Kestrel", "Fjord & Co", "Urban Loom", "Maple", "Tidewater")
ALT_TEXT_TEMPLATES = (
    "{adj} {noun}, item #{num}",
    "IMG_{num} {noun}",
    "buy {adj} {noun} online, free shipping",
    "{who} {noun}",
    "{noun} - {brand}",
    "{brand} {adj} {noun}",
    "{who} {adj} {noun} size {size}",
    "product shot: {noun}",
    "new arrivals | {adj} {noun} | sale {pct}% off",
    "{noun}_{num}.jpg",
    "my new {noun}",
    "{brand} {noun} for {who2}",
    "clearance: {who} {noun}",
    "{adj} {noun}",
    "{noun}",
    "shop the look: {adj} {noun} by {brand}",
)
ALT_TEXT_SIZES = ("XS", "S", "M", "L", "XL", "38", "40", "42")
# skimage.data photos (CC0) with a class name each; cat() duplicates chelsea() and is left out.
SKIMAGE_PHOTOS = {"chelsea": "cat", "astronaut": "astronaut", "coffee": "coffee cup",
                  "rocket": "rocket", "horse": "horse", "camera": "camera man"}


# ---------------------------------------------------------------- sources


def fashion_mnist(split: str = "train", *, root: str | Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [n, 28, 28], labels int64 [n])`` read from the IDX files."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = Path(root)
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file():
        raise UserError(f"Fashion-MNIST not found at {root} (Debian package dataset-fashion-mnist)")
    with gzip.open(images_path) as f:
        raw = f.read()
    count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)
    with gzip.open(labels_path) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def shapes(count: int, *, seed: int = 0, size: int = 32) -> tuple[list[Image.Image], list[str], list[str]]:
    """``count`` images of one coloured shape on white, with label ``"red circle"`` and
    a caption that describes it (several wordings)."""
    rng = np.random.default_rng(seed)
    colours = list(SHAPE_COLOURS)
    images, labels, captions = [], [], []
    for _ in range(count):
        colour = colours[rng.integers(len(colours))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        radius = rng.uniform(0.25, 0.42) * size
        cx, cy = rng.uniform(radius, size - radius, size=2)
        image = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = SHAPE_COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
        label = f"{colour} {shape}"
        template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
        images.append(image)
        labels.append(label)
        captions.append(template.format(label))
    return images, labels, captions


def skimage_photos() -> tuple[list[Image.Image], list[str]]:
    """scikit-image's bundled sample photos (CC0) and a class name for each."""
    from skimage import data as skdata

    images, labels = [], []
    for name, label in SKIMAGE_PHOTOS.items():
        array = getattr(skdata, name)()
        images.append(Image.fromarray(array).convert("RGB"))
        labels.append(label)
    return images, labels


# ---------------------------------------------------------------- writers


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_shards(directory: str | Path, images: list, captions: list[str], *,
                 rows_per_shard: int = 10_000, row_group_size: int = 1024,
                 url_prefix: str = "https://example.invalid/") -> list[Path]:
    """Write pairs as a run's kept shards: ``directory/shards/part-NNNNN.parquet``."""
    out = Path(directory) / "shards"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for part, start in enumerate(range(0, len(images), rows_per_shard)):
        chunk = range(start, min(start + rows_per_shard, len(images)))
        encoded = [encode_png(images[i]) for i in chunk]
        sizes = [_size(images[i]) for i in chunk]
        urls = [f"{url_prefix}{i}.png" for i in chunk]
        table = pa.table({
            "uid": pa.array([make_uid(u, captions[i]) for u, i in zip(urls, chunk)], pa.string()),
            "url": pa.array(urls, pa.string()),
            "caption": pa.array([captions[i] for i in chunk], pa.string()),
            "image": pa.array(encoded, pa.binary()),
            "width": pa.array([w for w, _ in sizes], pa.int32()),
            "height": pa.array([h for _, h in sizes], pa.int32()),
            "reject": pa.nulls(len(chunk), pa.string()),
        })
        path = out / f"part-{part:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def write_labeled(path: str | Path, images: list, labels: list[str], captions: list[str] | None = None) -> Path:
    """Write a labeled eval parquet: ``image`` (PNG), ``label`` and optional ``caption``."""
    columns = {"image": pa.array([encode_png(i) for i in images], pa.binary()),
               "label": pa.array(labels, pa.string())}
    if captions is not None:
        columns["caption"] = pa.array(captions, pa.string())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def fashion_mnist_captions(labels: np.ndarray, *, seed: int = 0) -> list[str]:
    """Templated captions for Fashion-MNIST labels ("a photo of a sneaker.")."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(CAPTION_TEMPLATES), size=len(labels))
    return [CAPTION_TEMPLATES[t].format(FASHION_MNIST_CLASSES[c]) for t, c in zip(picks, labels)]


def alt_text_captions(labels, seed: int = 0) -> list[str]:
    """Short web alt-text for Fashion-MNIST products, one caption per label.

    ``labels`` are Fashion-MNIST label ids (0-9, ``FASHION_MNIST_CLASSES`` order). Each
    caption names the product the way shops and blogs do, with a synonym of the class
    ("trainers", "chelsea boots"), inside one of ``ALT_TEXT_TEMPLATES`` with filler that
    carries no class information: SKUs and file names ("IMG_2263 T-shirt"), adjectives,
    brands, sizes, shop phrases ("buy cozy t-shirt online, free shipping"). The same
    ``(labels, seed)`` always give the same captions; another seed gives other wordings
    for held-out pairs. A caption is about the class only: Fashion-MNIST has no colour
    or shape detail to describe, so colour words are filler too.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(ALT_TEXT_NOUNS)):
        raise ValueError(f"Fashion-MNIST labels are 0..{len(ALT_TEXT_NOUNS) - 1}")
    rng = np.random.default_rng([seed, 14])
    n = len(labels)
    picks = {name: rng.integers(len(choices), size=n) for name, choices in (
        ("template", ALT_TEXT_TEMPLATES), ("noun", ALT_TEXT_NOUNS[0]), ("adj", ALT_TEXT_ADJECTIVES),
        ("who", ALT_TEXT_WHO), ("who2", ALT_TEXT_WHO), ("brand", ALT_TEXT_BRANDS), ("size", ALT_TEXT_SIZES))}
    numbers = rng.integers(1000, 10_000, size=n)
    percents = rng.choice((10, 20, 30, 40, 50), size=n)
    return [ALT_TEXT_TEMPLATES[picks["template"][i]].format(
        noun=ALT_TEXT_NOUNS[label][picks["noun"][i]], adj=ALT_TEXT_ADJECTIVES[picks["adj"][i]],
        who=ALT_TEXT_WHO[picks["who"][i]], who2=ALT_TEXT_WHO[picks["who2"][i]].rstrip("'"),
        brand=ALT_TEXT_BRANDS[picks["brand"][i]], size=ALT_TEXT_SIZES[picks["size"][i]],
        num=numbers[i], pct=percents[i]) for i, label in enumerate(labels)]


def product_photos(images: np.ndarray, size: int = 64) -> list[Image.Image]:
    """Fashion-MNIST images (``uint8 [n, 28, 28]``) as the pool holds them after download:
    RGB, upscaled (bicubic) to ``size`` px."""
    return [Image.fromarray(image).convert("RGB").resize((size, size), Image.BICUBIC) for image in images]


def mismatch_captions(labels, captions: list[str], *, fraction: float, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Give a ``fraction`` of the pairs the caption of another pair whose label differs
    (a caption that describes another kind of product), as web pools have them.

    Returns the new captions and a boolean mask of the mismatched rows. Deterministic in
    ``seed``; the chosen rows and donors depend on nothing else.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 41])
    n = len(labels)
    rows = np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False))
    donors = other_label_partners(labels, rng)[rows]
    out = list(captions)
    for row, donor in zip(rows, donors):
        out[row] = captions[donor]
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return out, mask


def other_label_partners(labels, rng: np.random.Generator) -> np.ndarray:
    """For each row, a random other row with a different label (any other row when
    every label is the same)."""
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise ValueError("need at least two pairs to swap captions")
    partners = rng.integers(n, size=n)
    allowed = len(np.unique(labels)) > 1
    bad = (partners == np.arange(n)) | ((labels[partners] == labels) if allowed else False)
    while bad.any():
        partners[bad] = rng.integers(n, size=int(bad.sum()))
        bad = (partners == np.arange(n)) | ((labels[partners] == labels) if allowed else False)
    return partners


def _size(image) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        return image.shape[1], image.shape[0]
    return image.size
