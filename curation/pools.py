"""Web-like benchmark pools with known truth: the data curation defaults are measured on.

A curation recipe is judged by the model trained on what it keeps (DataComp, Gadre et
al., 2023), so a benchmark pool needs what a crawl has *and* the truth of every row.
Two image sources, one noise model:

- ``fashion``: product photos. Fashion-MNIST items (Debian ``dataset-fashion-mnist``)
  tinted in a product colour on a white background, served at 96-256 px;
- ``photos``: crops of scikit-image's bundled photographs (cat, astronaut, coffee cup,
  rocket, brick wall...), several scales, flips and exposures, served at 128-320 px.

Clean pairs carry short alt-texts of the kind web pools are full of: one or two words
(``T-shirt``, ``IMG_2263 T-shirt``), item codes, and SEO templates that repeat the same
caption on many different images. Concept frequencies follow a Zipf law (a few head
concepts dominate). Injected trouble, each row tagged in ``sample_kind``:

- ``mismatch``: the caption describes another picture (another concept);
- ``duplicate``: a re-upload of an earlier clean image at another URL: the same bytes,
  a JPEG re-encode or a resize, with the same or a new caption;
- ``text``: a picture of text whose caption is that text (CLIP's text-spotting trap);
- ``foreign``: a correct caption in German, French, Spanish, Italian, Portuguese or Dutch;
- ``broken``: a 404 or corrupt bytes.

``ok`` marks clean pairs. The eval set is balanced, labelled with concept names, and
drawn apart from the pool (Fashion-MNIST's test split; crops with another seed); the
trusted set (for a DFN filter model) is clean pairs drawn apart from both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
from PIL import Image, ImageEnhance

from clipcurate.curation.sampleweb import Sample, encode_jpeg, render_text
from clipcurate.pipelines.stage import make_uid

NOISE = {"mismatch": 0.22, "duplicate": 0.08, "text": 0.05, "foreign": 0.05, "broken": 0.04}
CLEAN = "ok"

COLOURS = {"red": (200, 30, 40), "blue": (30, 60, 190), "green": (40, 140, 60), "navy": (25, 30, 80),
           "beige": (210, 190, 150), "grey": (120, 120, 120), "pink": (230, 120, 170), "brown": (110, 70, 40),
           "olive": (110, 120, 40), "yellow": (230, 200, 30), "black": (25, 25, 25), "orange": (235, 120, 20)}

FASHION_NAMES = {  # Fashion-MNIST label order; the first name is the concept's label
    "t-shirt": ("t-shirt", "T-shirt", "tee", "crew neck tee"),
    "trouser": ("trouser", "trousers", "pants", "chinos"),
    "pullover": ("pullover", "sweater", "jumper", "knit pullover"),
    "dress": ("dress", "midi dress", "summer dress", "shift dress"),
    "coat": ("coat", "wool coat", "overcoat", "winter coat"),
    "sandal": ("sandal", "sandals", "strappy sandals", "flat sandal"),
    "shirt": ("shirt", "button-down shirt", "oxford shirt", "casual shirt"),
    "sneaker": ("sneaker", "sneakers", "trainers", "running shoe"),
    "bag": ("bag", "handbag", "tote bag", "shoulder bag"),
    "ankle boot": ("ankle boot", "ankle boots", "booties", "chelsea boot"),
}
PHOTO_NAMES = {  # skimage.data function -> names; the first name is the concept's label
    "chelsea": ("cat", "tabby cat", "ginger cat", "kitten"),
    "astronaut": ("astronaut", "astronaut in a spacesuit", "space explorer", "nasa astronaut"),
    "coffee": ("coffee cup", "cup of coffee", "espresso cup", "coffee"),
    "rocket": ("rocket", "rocket on the launch pad", "space rocket", "launch vehicle"),
    "camera": ("cameraman", "man with a film camera", "photographer", "camera operator"),
    "coins": ("coins", "old coins", "pile of coins", "coin collection"),
    "brick": ("brick wall", "bricks", "brick texture", "old brick wall"),
    "grass": ("grass", "lawn", "green grass", "grass texture"),
    "gravel": ("gravel", "pebbles", "gravel path", "small stones"),
    "moon": ("moon", "lunar surface", "moon craters", "full moon"),
    "stereo_motorcycle": ("motorcycle", "motorbike", "sport bike", "motorcycle in a garage"),
    "hubble_deep_field": ("galaxies", "deep space", "hubble deep field", "starry galaxy field"),
}
ADJECTIVES = ("cozy", "slim", "classic", "vintage", "casual", "premium", "lightweight", "stylish")
FASHION_TEMPLATES = (
    "{name}", "IMG_{n} {name}", "{colour} {name}", "{adj} {name}, item #{n}",
    "buy {adj} {name} online, free shipping", "women's {colour} {name} size {size}",
    "men's {name} - {colour}", "new {colour} {name} for sale", "{colour} {adj} {name} on white background",
    "{name} {colour} {n}",
)
PHOTO_TEMPLATES = (
    "{name}", "IMG_{n}.jpg {name}", "stock photo of {name}, royalty free", "{name} wallpaper 4k",
    "close-up of {name}", "{name} picture {n}", "beautiful {name} photo", "{name} - download free image",
    "{adj} {name}", "photo: {name}",
)
# Hand-made but real-language captions: (language, template) and the concept words.
FOREIGN_TEMPLATES = (
    ("de", "{w} kaufen, kostenloser Versand und Rückgabe"), ("de", "Neue {w} für Damen und Herren im Angebot"),
    ("fr", "acheter {w} en ligne, livraison gratuite"), ("fr", "{w} pas cher pour femme et homme"),
    ("es", "comprar {w} en línea con envío gratis"), ("es", "{w} de alta calidad al mejor precio"),
    ("it", "{w} in vendita, spedizione gratuita in tutta Italia"), ("pt", "comprar {w} online com frete grátis"),
    ("nl", "{w} kopen met gratis verzending en retour"),
)
FOREIGN_WORDS = {
    "de": {"t-shirt": "T-Shirts", "trouser": "Hosen", "pullover": "Pullover", "dress": "Kleider", "coat": "Mäntel",
           "sandal": "Sandalen", "shirt": "Hemden", "sneaker": "Turnschuhe", "bag": "Handtaschen",
           "ankle boot": "Stiefeletten", "cat": "Katzenbilder", "astronaut": "Astronautenfotos",
           "coffee cup": "Kaffeetassen", "rocket": "Raketenbilder", "cameraman": "Kameramann-Fotos",
           "coins": "Münzen", "brick wall": "Ziegelmauer-Bilder", "grass": "Rasenbilder", "gravel": "Kies",
           "moon": "Mondbilder", "motorcycle": "Motorräder", "galaxies": "Galaxienbilder"},
    "fr": {"t-shirt": "t-shirts", "trouser": "pantalons", "pullover": "pulls", "dress": "robes", "coat": "manteaux",
           "sandal": "sandales", "shirt": "chemises", "sneaker": "baskets", "bag": "sacs à main",
           "ankle boot": "bottines", "cat": "photos de chats", "astronaut": "photos d'astronautes",
           "coffee cup": "tasses à café", "rocket": "images de fusées", "cameraman": "photos de caméraman",
           "coins": "pièces de monnaie", "brick wall": "murs de briques", "grass": "images de gazon",
           "gravel": "gravier", "moon": "images de la lune", "motorcycle": "motos", "galaxies": "images de galaxies"},
    "es": {"t-shirt": "camisetas", "trouser": "pantalones", "pullover": "jerséis", "dress": "vestidos",
           "coat": "abrigos", "sandal": "sandalias", "shirt": "camisas", "sneaker": "zapatillas", "bag": "bolsos",
           "ankle boot": "botines", "cat": "fotos de gatos", "astronaut": "fotos de astronautas",
           "coffee cup": "tazas de café", "rocket": "imágenes de cohetes", "cameraman": "fotos de camarógrafos",
           "coins": "monedas antiguas", "brick wall": "paredes de ladrillo", "grass": "imágenes de césped",
           "gravel": "grava", "moon": "imágenes de la luna", "motorcycle": "motocicletas",
           "galaxies": "imágenes de galaxias"},
    "it": {"t-shirt": "magliette", "trouser": "pantaloni", "pullover": "maglioni", "dress": "vestiti",
           "coat": "cappotti", "sandal": "sandali", "shirt": "camicie", "sneaker": "scarpe da ginnastica",
           "bag": "borse", "ankle boot": "stivaletti", "cat": "foto di gatti", "astronaut": "foto di astronauti",
           "coffee cup": "tazzine da caffè", "rocket": "immagini di razzi", "cameraman": "foto di cameraman",
           "coins": "monete antiche", "brick wall": "muri di mattoni", "grass": "immagini di erba",
           "gravel": "ghiaia", "moon": "immagini della luna", "motorcycle": "motociclette",
           "galaxies": "immagini di galassie"},
    "pt": {"t-shirt": "camisetas", "trouser": "calças", "pullover": "suéteres", "dress": "vestidos",
           "coat": "casacos", "sandal": "sandálias", "shirt": "camisas", "sneaker": "tênis", "bag": "bolsas",
           "ankle boot": "botinhas", "cat": "fotos de gatos", "astronaut": "fotos de astronautas",
           "coffee cup": "xícaras de café", "rocket": "imagens de foguetes", "cameraman": "fotos de cinegrafistas",
           "coins": "moedas antigas", "brick wall": "paredes de tijolos", "grass": "imagens de grama",
           "gravel": "cascalho", "moon": "imagens da lua", "motorcycle": "motocicletas",
           "galaxies": "imagens de galáxias"},
    "nl": {"t-shirt": "T-shirts", "trouser": "broeken", "pullover": "truien", "dress": "jurken", "coat": "jassen",
           "sandal": "sandalen", "shirt": "overhemden", "sneaker": "sneakers", "bag": "handtassen",
           "ankle boot": "enkellaarsjes", "cat": "foto's van katten", "astronaut": "foto's van astronauten",
           "coffee cup": "koffiekopjes", "rocket": "afbeeldingen van raketten", "cameraman": "foto's van cameramannen",
           "coins": "oude munten", "brick wall": "bakstenen muren", "grass": "afbeeldingen van gras",
           "gravel": "grind", "moon": "afbeeldingen van de maan", "motorcycle": "motorfietsen",
           "galaxies": "afbeeldingen van sterrenstelsels"},
}
SIGNS = ("{NAME} SALE 50% OFF", "BEST {NAME} DEALS", "FREE SHIPPING ON {NAME}", "NEW {NAME} IN STOCK",
         "{NAME} CLEARANCE")


@dataclass
class Source:
    """An image source: concept names and a renderer ``render(concept, rng) -> (image, words)``
    where ``words`` fill the caption templates (colour, ...)."""

    name: str
    concepts: tuple[str, ...]
    names: dict[str, tuple[str, ...]]
    templates: tuple[str, ...]
    render: Callable[[int, np.random.Generator, str], tuple[Image.Image, dict]]
    sizes: tuple[int, int]

    def caption(self, concept: int, words: dict, rng: np.random.Generator) -> str:
        """A clean alt-text for ``concept`` (names, templates and numbers drawn from rng)."""
        names = self.names[self.concepts[concept]]
        template = self.templates[int(rng.integers(len(self.templates)))]
        return template.format(name=names[int(rng.integers(len(names)))], n=int(rng.integers(1000, 9999)),
                               size=int(rng.choice([6, 8, 10, 12, 38, 40, 42])),
                               adj=ADJECTIVES[int(rng.integers(len(ADJECTIVES)))],
                               colour=words.get("colour", "")).strip()


def source(name: str) -> Source:
    """The ``fashion`` or ``photos`` image source."""
    if name == "fashion":
        return Source("fashion", tuple(FASHION_NAMES), FASHION_NAMES, FASHION_TEMPLATES, _render_fashion, (96, 256))
    if name == "photos":
        concepts = tuple(names[0] for names in PHOTO_NAMES.values())
        names = {names[0]: names for names in PHOTO_NAMES.values()}
        return Source("photos", concepts, names, PHOTO_TEMPLATES, _render_photo, (128, 320))
    raise ValueError(f"unknown pool source {name!r} (fashion, photos)")


# ------------------------------------------------------------------ renderers

_LOADED: dict = {}  # source arrays and photos, loaded once per process


def _fashion_arrays(split: str, cache: dict) -> dict[int, np.ndarray]:
    """Fashion-MNIST images per label: the pool and trusted set draw from the train
    split (disjoint index ranges), the eval set from the test split."""
    if split not in cache:
        from clipcurate.train.datasets import fashion_mnist

        images, labels = fashion_mnist("train" if split != "test" else "test")
        if split == "pool":
            images, labels = images[:50_000], labels[:50_000]
        elif split == "trusted":
            images, labels = images[50_000:], labels[50_000:]
        cache[split] = {c: images[labels == c] for c in range(10)}
    return cache[split]


def _render_fashion(concept: int, rng: np.random.Generator, split: str) -> tuple[Image.Image, dict]:
    items = _fashion_arrays(split, _LOADED)[concept]
    item = items[int(rng.integers(len(items)))].astype(np.float32) / 255.0
    colour_name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    colour = np.array(COLOURS[colour_name], np.float32)
    side = int(rng.integers(40, 54))
    alpha = np.asarray(Image.fromarray((item * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC),
                       np.float32)[..., None] / 255.0
    shade = colour * (0.55 + 0.45 * alpha)
    canvas = np.full((64, 64, 3), 250.0, np.float32)
    x, y = (int(v) for v in rng.integers(0, 64 - side + 1, size=2))
    canvas[y:y + side, x:x + side] = canvas[y:y + side, x:x + side] * (1 - alpha) + shade * alpha
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)), {"colour": colour_name}


def _photo(name: str) -> Image.Image:
    if name not in _LOADED:
        from skimage import data as skdata

        array = getattr(skdata, name)()
        array = array[0] if isinstance(array, tuple) else array  # stereo_motorcycle: (left, right, disparity)
        _LOADED[name] = Image.fromarray(array).convert("RGB")
    return _LOADED[name]


def _render_photo(concept: int, rng: np.random.Generator, split: str) -> tuple[Image.Image, dict]:
    photo = _photo(list(PHOTO_NAMES)[concept])
    width, height = photo.size
    scale = rng.uniform(0.35, 0.9)
    aspect = rng.uniform(0.8, 1.25)
    w = int(min(width, scale * min(width, height) * aspect))
    h = int(min(height, scale * min(width, height) / aspect))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    image = photo.crop((x, y, x + w, y + h)).resize((64, 64), Image.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.75, 1.25))
    return image, {}


# ------------------------------------------------------------------ the pool


@dataclass
class Pool:
    """A generated pool: samples to serve, a labelled eval set and a trusted set."""

    source: str
    samples: list[Sample]
    concepts: tuple[str, ...]
    eval_set: pa.Table
    trusted: pa.Table

    def truth(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.samples:
            counts[s.kind] = counts.get(s.kind, 0) + 1
        return counts


def make_pool(source_name: str, n: int, *, seed: int = 0, eval_per_concept: int = 100,
              trusted: int = 1500, noise: dict[str, float] | None = None, zipf: float = 0.8) -> Pool:
    """Generate a pool of ``n`` rows from one image source, deterministic in ``seed``."""
    src = source(source_name)
    noise = NOISE if noise is None else noise
    rng = np.random.default_rng([seed, 7])
    weights = 1.0 / np.arange(1, len(src.concepts) + 1) ** zipf
    order = rng.permutation(len(src.concepts))  # which concepts are the head differs by seed
    prior = np.empty(len(src.concepts))
    prior[order] = weights / weights.sum()
    kinds = rng.choice([CLEAN, *noise], size=n, p=[1 - sum(noise.values()), *noise.values()]).tolist()
    samples: list[Sample] = []
    originals: list[tuple] = []  # (sample, concept, served image, caption words)
    for i, kind in enumerate(kinds):
        path = f"/{src.name}/{i:06d}.jpg"
        concept = int(rng.choice(len(src.concepts), p=prior))
        label = src.concepts[concept]
        if kind == "duplicate" and originals:
            samples.append(_reupload(path, originals[int(rng.integers(len(originals)))], src, rng))
            continue
        if kind == "duplicate":
            kind = CLEAN
        if kind == "text":
            text = SIGNS[int(rng.integers(len(SIGNS)))].format(NAME=label.upper())
            body = encode_jpeg(render_text(text, (240, 160)), quality=int(rng.integers(80, 95)))
            samples.append(Sample(path, text.lower(), kind, label, body))
            continue
        image, words = src.render(concept, rng, "pool")
        served = _serve_size(image, src.sizes, rng)
        body = encode_jpeg(served, quality=int(rng.integers(80, 95)))
        if kind == "mismatch":
            other = int(rng.choice([c for c in range(len(src.concepts)) if c != concept]))
            caption = src.caption(other, {"colour": list(COLOURS)[int(rng.integers(len(COLOURS)))]}, rng)
        elif kind == "foreign":
            language, template = FOREIGN_TEMPLATES[int(rng.integers(len(FOREIGN_TEMPLATES)))]
            caption = template.format(w=FOREIGN_WORDS[language][label])
        else:
            caption = src.caption(concept, words, rng)
        if kind == "broken":
            body = None if rng.random() < 0.5 else rng.bytes(1500)
        sample = Sample(path, caption, kind, label, body)
        samples.append(sample)
        if kind == CLEAN:
            originals.append((sample, concept, served, words))
    return Pool(src.name, samples, src.concepts, eval_set(src, eval_per_concept, seed),
                trusted_set(src, trusted, seed))


def eval_set(src: Source, per_concept: int, seed: int) -> pa.Table:
    """Balanced labelled images for zero-shot evaluation (``curate eval`` format)."""
    rng = np.random.default_rng([seed, 11])
    images, labels, captions = [], [], []
    for concept, label in enumerate(src.concepts):
        for _ in range(per_concept):
            image, words = src.render(concept, rng, "test")
            images.append(encode_jpeg(image, 92))
            labels.append(label)
            captions.append(src.caption(concept, words, rng))
    return pa.table({"image": pa.array(images, pa.binary()), "label": labels, "caption": captions})


def trusted_set(src: Source, n: int, seed: int) -> pa.Table:
    """Clean pairs in the shard format, drawn apart from the pool: what a DFN filter
    model trains on (Fang et al., 2023)."""
    rng = np.random.default_rng([seed, 13])
    rows: dict[str, list] = {"uid": [], "url": [], "caption": [], "image": [], "width": [], "height": [], "label": []}
    for i in range(n):
        concept = int(rng.integers(len(src.concepts)))
        image, words = src.render(concept, rng, "trusted")
        caption = src.caption(concept, words, rng)
        url = f"trusted://{src.name}/{i}"
        rows["uid"].append(make_uid(url, caption))
        rows["url"].append(url)
        rows["caption"].append(caption)
        rows["image"].append(encode_jpeg(image, 92))
        rows["width"].append(image.size[0])
        rows["height"].append(image.size[1])
        rows["label"].append(src.concepts[concept])
    return pa.table({**{k: rows[k] for k in ("uid", "url", "caption")}, "image": pa.array(rows["image"], pa.binary()),
                     "width": pa.array(rows["width"], pa.int32()), "height": pa.array(rows["height"], pa.int32()),
                     "reject": pa.nulls(n, pa.string()), "label": rows["label"]})


def _serve_size(image: Image.Image, sizes: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    side = int(rng.integers(sizes[0], sizes[1] + 1))
    return image.resize((side, side), Image.BICUBIC)


def _reupload(path: str, original: tuple, src: Source, rng) -> Sample:
    """The same picture at another URL: same bytes, a re-encode or a resize."""
    sample, concept, served, words = original
    roll = rng.random()
    if roll < 0.4:
        body = sample.body
    elif roll < 0.7:
        body = encode_jpeg(served, quality=int(rng.integers(55, 75)))
    else:
        side = max(64, int(served.size[0] * rng.uniform(0.6, 0.9)))
        body = encode_jpeg(served.resize((side, side), Image.BICUBIC), quality=90)
    caption = sample.caption if rng.random() < 0.5 else src.caption(concept, words, rng)
    return Sample(path, caption, "duplicate", sample.label, body, sample.path)

