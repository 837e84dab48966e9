"""Small real and synthetic image-text data, written in the formats the trainer reads.

- shards: a run's ``OUT/shards/part-NNNNN.parquet`` layout (uid, url, caption, image
  binary, width, height, reject), so the trainer reads them like curated output;
- a labeled eval parquet: ``image`` (encoded), ``label`` (class name), ``caption``.

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

from pipelines.errors import UserError
from pipelines.stage import make_uid

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Class names from the dataset's README (Xiao et al. 2017), in label order.
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot")
CAPTION_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "a black and white photo of a {}.",
                     "a small photo of the {}.", "an image of a {}.", "a low resolution photo of a {}.",
                     "a product photo of a {}.")
SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 215, 20)}
SHAPES = ("circle", "square", "triangle")
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


def _size(image) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        return image.shape[1], image.shape[0]
    return image.size
