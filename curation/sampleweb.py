"""A local sample web: a loopback HTTP server with generated images and captions.

The demo, the tests and the benchmarks share it. Besides matched image/caption
pairs (coloured shapes on plain or textured backgrounds) it serves what a real crawl
meets: 404s, corrupt and truncated files, tiny and very wide images, re-uploaded
duplicates, captions that describe another image, and images of rendered text
whose caption is that text. Each row records its ``sample_kind`` so a run can be
scored against the truth.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
COLOURS = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210), "yellow": (235, 205, 30),
    "orange": (240, 130, 20), "purple": (130, 50, 170), "black": (20, 20, 20), "pink": (240, 120, 180),
}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (150, 150, 150), "striped": None, "dotted": None}
TEMPLATES = (
    "a {colour} {shape} on a {background} background",
    "a photo of a {colour} {shape}",
    "a simple drawing of a {colour} {shape} on {background} paper",
    "the {colour} {shape} sits in the middle of a {background} picture",
    "close-up of one {colour} {shape}",
)
SIGN_WORDS = ("BIG SUMMER SALE", "OPEN LATE TODAY", "FREE SHIPPING NOW", "BEST PRICE EVER", "HELLO WORLD")
# share of the pool for each kind of trouble; the rest are matched pairs
KINDS = {"mismatch": 0.08, "duplicate": 0.05, "text": 0.05, "tiny": 0.03, "wide": 0.02,
         "corrupt": 0.03, "truncated": 0.03, "missing": 0.04}


def render_shape(shape: str, colour: str, background: str, size: tuple[int, int], rng) -> Image.Image:
    """Draw one coloured shape, position jittered, on a plain or textured background."""
    width, height = size
    fill = BACKGROUNDS[background] or (235, 235, 235)
    image = Image.new("RGB", size, fill)
    draw = ImageDraw.Draw(image)
    if background == "striped":
        for x in range(0, width, 12):
            draw.rectangle([x, 0, x + 5, height], fill=(200, 200, 215))
    elif background == "dotted":
        for x in range(4, width, 14):
            for y in range(4, height, 14):
                draw.ellipse([x, y, x + 3, y + 3], fill=(190, 190, 190))
    side = min(width, height) * rng.uniform(0.45, 0.7)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * width
    cy = height / 2 + rng.uniform(-0.1, 0.1) * height
    box = [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]
    rgb = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[colour])
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=rgb)
    elif shape == "star":
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        radii = np.where(np.arange(10) % 2 == 0, side / 2, side / 5)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)], fill=rgb)
    elif shape == "cross":
        third = side / 3
        draw.rectangle([box[0], cy - third / 2, box[2], cy + third / 2], fill=rgb)
        draw.rectangle([cx - third / 2, box[1], cx + third / 2, box[3]], fill=rgb)
    elif shape == "ring":
        draw.ellipse(box, outline=rgb, width=max(3, int(side / 7)))
    return image


def render_text(text: str, size: tuple[int, int]) -> Image.Image:
    """Black words on a light sign, large enough for OCR."""
    from PIL import ImageFont

    image = Image.new("RGB", size, (245, 240, 225))
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=max(12, size[1] // 8))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    words = text.split()
    lines = [" ".join(words[i:i + 2]) for i in range(0, len(words), 2)]
    y = size[1] // 5
    for line in lines:
        draw.text((size[0] // 12, y), line, fill=(10, 10, 10), font=font)
        y += size[1] // 4
    return image


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class Sample:
    path: str
    caption: str
    kind: str
    label: str | None
    body: bytes | None  # None: 404
    origin: str | None = None  # a re-upload: the path of the picture it copies


def generate_samples(n: int, seed: int = 0) -> list[Sample]:
    """``n`` deterministic samples with the trouble mix of KINDS."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["ok", *KINDS], size=n, p=[1 - sum(KINDS.values()), *KINDS.values()])
    samples: list[Sample] = []
    originals: list[Sample] = []
    for i, kind in enumerate(kinds):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        background = rng.choice(list(BACKGROUNDS))
        caption = rng.choice(TEMPLATES).format(colour=colour, shape=shape, background=background)
        size = (int(rng.integers(96, 257)), int(rng.integers(96, 257)))
        path, label = f"/img/{i:06d}.jpg", str(shape)
        if kind == "duplicate" and originals:
            source = originals[int(rng.integers(len(originals)))]
            samples.append(Sample(path, f"{source.caption}, re-uploaded", kind, source.label, source.body,
                                  source.path))
            continue
        if kind == "duplicate":
            kind = "ok"
        if kind == "text":
            words = str(rng.choice(SIGN_WORDS))
            samples.append(Sample(path, words.lower(), kind, None, encode_jpeg(render_text(words, (240, 160)))))
            continue
        if kind == "tiny":
            size = (12, 12)
        elif kind == "wide":
            size = (480, 96)
        body = encode_jpeg(render_shape(shape, colour, background, size, rng))
        if kind == "mismatch":
            other = rng.choice([s for s in SHAPES if s != shape])
            other_colour = rng.choice([c for c in COLOURS if c != colour])
            caption = rng.choice(TEMPLATES).format(colour=other_colour, shape=other, background=background)
        elif kind == "corrupt":
            body = rng.bytes(2000)
        elif kind == "truncated":
            body = body[: len(body) // 2]
        elif kind == "missing":
            body = None
        sample = Sample(path, caption, kind, label, body)
        samples.append(sample)
        if kind == "ok":
            originals.append(sample)
    return samples


def labeled_set(per_class: int = 40, seed: int = 1, size: int = 128) -> pa.Table:
    """Held-out labeled images (one shape per image) for zero-shot evaluation."""
    rng = np.random.default_rng(seed)
    rows = {"image": [], "label": [], "caption": []}
    for shape in SHAPES:
        for _ in range(per_class):
            colour, background = rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS))
            rows["image"].append(encode_jpeg(render_shape(shape, colour, background, (size, size), rng)))
            rows["label"].append(shape)
            rows["caption"].append(f"a {colour} {shape} on a {background} background")
    return pa.table({"image": pa.array(rows["image"], pa.binary()), "label": rows["label"], "caption": rows["caption"]})


def trusted_pairs(n: int = 600, seed: int = 2, size: int = 96) -> pa.Table:
    """Clean matched pairs in the shard format: the trusted set a DFN filter model trains on."""
    from clipcurate.pipelines.stage import make_uid

    rng = np.random.default_rng(seed)
    rows = {"uid": [], "caption": [], "image": [], "width": [], "height": []}
    for i in range(n):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        background = rng.choice(list(BACKGROUNDS))
        caption = rng.choice(TEMPLATES).format(colour=colour, shape=shape, background=background)
        rows["uid"].append(make_uid(f"trusted:{i}", caption))
        rows["caption"].append(caption)
        rows["image"].append(encode_jpeg(render_shape(shape, colour, background, (size, size), rng)))
        rows["width"].append(size)
        rows["height"].append(size)
    return pa.table({"uid": rows["uid"], "caption": rows["caption"], "image": pa.array(rows["image"], pa.binary()),
                     "width": pa.array(rows["width"], pa.int32()), "height": pa.array(rows["height"], pa.int32())})


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1, run in a background thread while in a
    ``with`` block. Subclasses set ``self._server`` and may set ``self._stop`` (an Event
    their handlers watch) before serving."""

    _server: ThreadingHTTPServer
    _stop: threading.Event | None = None

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class WebSpec:
    """What rebuilds a sample web with the same URLs and bytes: the samples are a function
    of (samples, seed) alone, and the pool's URLs (so its uids) name the port."""

    samples: int
    seed: int
    port: int

    def build(self) -> "SampleWeb":
        return SampleWeb(n=self.samples, seed=self.seed, port=self.port)


class SampleWeb(LoopbackServer):
    """The server. ``with SampleWeb(n=500) as web: web.write_pool(path)``.

    ``requests`` counts requests per path, so tests can check what was fetched.
    """

    def __init__(self, n: int = 500, seed: int = 0, port: int = 0, delay: float = 0.0,
                 samples: list[Sample] | None = None):
        self.samples = generate_samples(n, seed) if samples is None else samples  # or a pool's own
        self.delay = delay  # seconds per response: a slow web, for resume tests
        self.routes = {s.path: s for s in self.samples}
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def _handler(self):
        web = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server naming
                with web._lock:
                    web.requests[self.path] += 1
                if web.delay:
                    time.sleep(web.delay)
                sample = web.routes.get(self.path)
                if sample is None or sample.body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(sample.body)))
                self.end_headers()
                self.wfile.write(sample.body)

            def log_message(self, *args):
                pass

        return Handler

    def pool(self) -> pa.Table:
        """The URL + caption list a crawl would start from, with the truth per row."""
        return pa.table({
            "url": [self.base_url + s.path for s in self.samples],
            "caption": [s.caption for s in self.samples],
            "sample_kind": [s.kind for s in self.samples],
            "label": [s.label for s in self.samples],
            "picture": [s.origin or s.path for s in self.samples],  # a re-upload and its original share one
        })

    def write_pool(self, path: str) -> str:
        pq.write_table(self.pool(), path)
        return path
